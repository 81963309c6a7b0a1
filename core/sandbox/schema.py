"""The base schema every migration runs against: a small shop with data that behaves like production's.

Built once per sandbox (a PostgreSQL template database, a DuckDB file) and cloned for every check. The data
is deterministic and planted so that the outcomes a migration reviewer worries about really happen:

- non-empty tables, so NOT NULL without a default fails (refunds is empty: there it does not);
- NULLs in orders.status, customers.phone/country_code, events.customer_id;
- exact and case-only duplicate emails, so UNIQUE(email) and UNIQUE(lower(email)) fail;
- orphans (order_items.sku not in products, events.customer_id of deleted customers), so a new foreign key fails;
- values a narrowing type change loses or rejects: cents in totals, times in timestamps, coupon codes longer
  than 10 characters, stock above 32767, names longer than 20 characters;
- views and foreign keys that depend on columns, so a DROP needs CASCADE and CASCADE takes the view along;
- large tables (>= LARGE_TABLE_ROWS rows: customers, orders, order_items, events) and small ones (countries,
  plans, products, refunds), so a rewrite of a lookup table is safe and the same rewrite of orders is not.
"""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

LARGE_TABLE_ROWS = 1000

POSTGRES_DDL = """
CREATE TABLE countries (code char(2) PRIMARY KEY, name text NOT NULL);
CREATE TABLE plans (id serial PRIMARY KEY, name text NOT NULL UNIQUE, price_cents integer NOT NULL,
                    max_seats integer);
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    phone text,
    country_code char(2) REFERENCES countries(code),
    plan_id integer NOT NULL REFERENCES plans(id),
    created_at timestamptz NOT NULL DEFAULT now(),
    is_active boolean NOT NULL DEFAULT true,
    notes text
);
CREATE INDEX customers_email_idx ON customers (email);
CREATE TABLE products (
    sku text PRIMARY KEY,
    title text NOT NULL,
    price numeric(10,2) NOT NULL CHECK (price >= 0),
    stock integer NOT NULL DEFAULT 0,
    discontinued boolean NOT NULL DEFAULT false
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    status text,
    total numeric(10,2) NOT NULL,
    currency char(3) NOT NULL DEFAULT 'EUR',
    placed_at timestamp NOT NULL,
    shipped_at timestamp,
    coupon_code varchar(20)
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_status_idx ON orders (status);
CREATE TABLE order_items (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    sku text NOT NULL,
    quantity integer NOT NULL,
    unit_price numeric(10,2) NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id);
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    customer_id bigint,
    kind text NOT NULL,
    payload jsonb,
    created_at timestamptz NOT NULL
);
CREATE TABLE refunds (
    id bigserial PRIMARY KEY,
    order_id bigint NOT NULL REFERENCES orders(id),
    amount numeric(10,2) NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE VIEW active_customers AS
    SELECT id, email, name, country_code FROM customers WHERE is_active;
CREATE VIEW customer_revenue AS
    SELECT c.id AS customer_id, c.email, count(o.id) AS orders, coalesce(sum(o.total), 0) AS revenue
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.email;
"""

# DuckDB has no serial types, no jsonb and no partial CHECK syntax differences that matter here; the shapes,
# names and data are the same so the application queries and counts mean the same thing.
DUCKDB_DDL = (POSTGRES_DDL
              .replace("bigserial", "bigint").replace("serial", "integer").replace("jsonb", "json")
              .replace("timestamptz", "timestamp").replace("DEFAULT now()", "DEFAULT current_timestamp"))

# Load order (foreign keys) and each table's columns as loaded.
TABLES = {
    "countries": ["code", "name"],
    "plans": ["id", "name", "price_cents", "max_seats"],
    "customers": ["id", "email", "name", "phone", "country_code", "plan_id", "created_at", "is_active", "notes"],
    "products": ["sku", "title", "price", "stock", "discontinued"],
    "orders": ["id", "customer_id", "status", "total", "currency", "placed_at", "shipped_at", "coupon_code"],
    "order_items": ["id", "order_id", "sku", "quantity", "unit_price"],
    "events": ["id", "customer_id", "kind", "payload", "created_at"],
    "refunds": ["id", "order_id", "amount", "reason", "created_at"],
}
SEQUENCES = {"plans": "plans_id_seq", "customers": "customers_id_seq", "orders": "orders_id_seq",
             "order_items": "order_items_id_seq", "events": "events_id_seq", "refunds": "refunds_id_seq"}

# The application's queries: what must keep working. Writes run in a transaction that is rolled back.
APP_QUERIES = {
    "customer_by_email": "SELECT id, email, name, phone FROM customers WHERE email = 'ann.lee1@example.com'",
    "recent_paid_orders": ("SELECT o.id, o.status, o.total, o.currency, c.email FROM orders o "
                           "JOIN customers c ON c.id = o.customer_id WHERE o.status = 'paid' "
                           "ORDER BY o.placed_at DESC LIMIT 20"),
    "active_customers": "SELECT id, email, name, country_code FROM active_customers ORDER BY id LIMIT 10",
    "top_revenue": "SELECT customer_id, email, orders, revenue FROM customer_revenue ORDER BY revenue DESC LIMIT 5",
    "catalog": "SELECT sku, title, price, stock FROM products WHERE NOT discontinued ORDER BY title LIMIT 50",
    "order_lines": ("SELECT oi.sku, oi.quantity, oi.unit_price, o.placed_at FROM order_items oi "
                    "JOIN orders o ON o.id = oi.order_id WHERE o.id = 42"),
    "events_by_kind": "SELECT kind, count(*) FROM events WHERE customer_id = 7 GROUP BY kind",
    "plans_page": "SELECT id, name, price_cents, max_seats FROM plans ORDER BY price_cents",
    "countries_list": "SELECT code, name FROM countries ORDER BY name",
    "signup": ("INSERT INTO customers (id, email, name, country_code, plan_id) "
               "VALUES (900001, 'new.user@example.com', 'New User', 'DE', 1)"),
    "place_order": ("INSERT INTO orders (id, customer_id, status, total, currency, placed_at) "
                    "VALUES (900001, 1, 'pending', 19.99, 'EUR', TIMESTAMP '2024-06-01 10:00:00')"),
    "add_item": ("INSERT INTO order_items (id, order_id, sku, quantity, unit_price) "
                 "VALUES (900001, 42, 'SKU-0001', 2, 9.50)"),
    "ship_order": "UPDATE orders SET status = 'shipped', shipped_at = TIMESTAMP '2024-06-02 09:00:00' WHERE id = 42",
    "track_event": ("INSERT INTO events (id, customer_id, kind, payload, created_at) "
                    "VALUES (900001, 7, 'login', NULL, TIMESTAMP '2024-06-01 10:00:00')"),
    "issue_refund": "INSERT INTO refunds (id, order_id, amount, reason) VALUES (900001, 42, 5.00, 'damaged')",
}

FIRST = ["Ann", "Bob", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lea",
         "Marta", "Nils", "Olga", "Pedro", "Qin", "Rosa", "Sven", "Tariq"]
LAST = ["Lee", "Smith", "Novak", "Garcia", "Okafor", "Schmidt", "Rossi", "Kowalski", "Haddad", "Tanaka",
        "Fernandez-Castillo", "Van der Berg", "Papadopoulos", "Nguyen", "Andersson"]
COUNTRIES = [("DE", "Germany"), ("FR", "France"), ("US", "United States"), ("GB", "United Kingdom"),
             ("PL", "Poland"), ("ES", "Spain"), ("IT", "Italy"), ("NL", "Netherlands"), ("SE", "Sweden"),
             ("JP", "Japan"), ("BR", "Brazil"), ("NG", "Nigeria")]
PLANS = [(1, "free", 0, 1), (2, "starter", 900, 3), (3, "team", 4900, 20), (4, "enterprise", 49900, None)]
COUPONS = ["SPRING10", "WELCOME", "SUMMER-SALE-2024", "BLACKFRIDAY-VIP", "VIP5", "NEWSLETTER-JUNE"]
STATUSES = ["pending", "paid", "paid", "shipped", "shipped", "cancelled"]
KINDS = ["login", "view", "view", "purchase", "logout"]


def rows(seed: int = 17) -> dict[str, list[tuple]]:
    """Every table's rows, deterministic. Sizes keep a clone small (cloning dominates a check's cost)."""
    rng = random.Random(seed)
    t0 = datetime(2023, 1, 1)
    out: dict[str, list[tuple]] = {"countries": COUNTRIES, "plans": PLANS}
    customers = []
    for i in range(1, 1501):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last.replace(' ', '')}{i}@example.com".lower()
        if i % 97 == 0:  # an exact duplicate of an earlier customer's email (signed up twice)
            email = customers[i - 40][1]
        elif i % 53 == 0:  # a case-only near-duplicate
            email = customers[i - 20][1].capitalize()
        name = f"{first} {last}" if i % 31 else f"{first.upper()} {last}  "
        phone = None if rng.random() < 0.3 else f"+49 30 {rng.randint(1000000, 1000400)}"
        country = None if rng.random() < 0.05 else rng.choice(COUNTRIES)[0]
        created = t0 + timedelta(minutes=rng.randint(0, 500_000))
        notes = "VIP, call before shipping" if rng.random() < 0.08 else None
        customers.append((i, email, name, phone, country, rng.choice(PLANS)[0], created.isoformat() + "+00",
                          rng.random() > 0.15, notes))
    out["customers"] = customers
    products = []
    for i in range(1, 201):
        stock = rng.randint(0, 500) if i % 50 else 40_000 + i  # a few bulk items overflow smallint
        products.append((f"SKU-{i:04d}", f"Product {i} {rng.choice(['lamp', 'mug', 'chair', 'cable'])}",
                         round(rng.uniform(1, 300), 2), stock, i % 17 == 0))
    out["products"] = products
    orders = []
    for i in range(1, 4001):
        status = None if i % 61 == 0 else rng.choice(STATUSES)
        placed = t0 + timedelta(minutes=rng.randint(0, 700_000))
        shipped = (placed + timedelta(hours=rng.randint(5, 90))).isoformat() if status == "shipped" else None
        coupon = rng.choice(COUPONS) if rng.random() < 0.15 else None
        orders.append((i, rng.randint(1, 1500), status, round(rng.uniform(5, 400), 2),
                       rng.choice(["EUR", "EUR", "USD", "GBP"]), placed.isoformat(), shipped, coupon))
    out["orders"] = orders
    items = []
    for i in range(1, 6001):
        sku = f"SKU-{rng.randint(1, 200):04d}" if rng.random() > 0.03 else f"OLD-{rng.randint(1, 40):03d}"
        items.append((i, rng.randint(1, 4000), sku, rng.randint(1, 5), round(rng.uniform(1, 300), 2)))
    out["order_items"] = items
    events = []
    for i in range(1, 2501):
        r = rng.random()
        cust = None if r < 0.1 else (rng.randint(1501, 1600) if r < 0.13 else rng.randint(1, 1500))
        payload = None if rng.random() < 0.2 else json.dumps({"page": rng.choice(["/", "/cart", "/help"])})
        events.append((i, cust, rng.choice(KINDS), payload,
                       (t0 + timedelta(seconds=rng.randint(0, 40_000_000))).isoformat() + "+00"))
    out["events"] = events
    out["refunds"] = []
    return out
