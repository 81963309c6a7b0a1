"""The demo's templates for Evolab's `templates` generator (the workspace's `templates.json`).

They are written apart from `generate_tickets.TEMPLATES`, which wrote the demo's seed, held-out and unlabeled
rows: a generator filling the data's own templates writes held-out and traffic rows word for word, and what
it adds to the demo is then circular. These say the same intents in other sentences; only the slot words
(products, amounts, order numbers: the domain's vocabulary) are the data's. `tests/test_demo_data.py` checks
that no sentence is shared, none is near one of the data's, and no filled template equals a data row.
"""
from __future__ import annotations

import re

from data.generate_tickets import SLOTS

TEMPLATES: dict[str, list[str]] = {
    "billing_question": [
        "Could you tell me what the {amount} item on my latest statement is for?",
        "My accountant needs an itemised breakdown of {invoice}, can you send one?",
        "The {plan} subscription cost more this cycle than I was quoted. Why the difference?",
        "On which day of the month does my {plan} billing period start?",
        "I'm trying to reconcile {invoice} and the subtotal doesn't add up for me.",
        "Is the {amount} taken on {date} a renewal or something else? Just want to understand it.",
        "Can invoices be sent to a second email address for our finance team?",
        "Does {invoice} list VAT separately? I need it for my expense report.",
        "What exactly am I paying for with the {amount} monthly line?",
        "Do you offer a discount for paying the {plan} plan yearly instead of monthly?",
    ],
    "payment_processing_error": [
        "Each attempt to pay with my {card} ends with a red error banner at checkout.",
        "The payment page rejected {method} twice and now it won't let me try again.",
        "My bank shows {amount} taken on {date} but your site says the payment never happened.",
        "I keep being asked to re-enter my card details and then the transaction is refused.",
        "Order {order} was billed {amount} two separate times within a minute.",
        "The attempt to settle {invoice} bounced even though my balance covers it.",
        "Checkout hangs on 'authorising' and then gives up with my {card}.",
        "There's a hold of {amount} on my {card} for an order that never went through.",
        "Your payment form says my billing postcode is invalid, but it is correct.",
        "Renewing with {method} failed and my {plan} features are locked now.",
    ],
    "refund_request": [
        "I would like my {amount} back for order {order}, the item was not as described.",
        "Please send the money for the returned {product} back to my {card}.",
        "When can I expect the reimbursement for order {order}? The return was accepted on {date}.",
        "I'm asking to be reimbursed for the {plan} charge, I didn't use it at all this month.",
        "Could you credit {amount} back to me? Half of what came in order {order} never worked.",
        "I sent back the {product} and want the purchase price returned, not store credit.",
        "Money back please for the {product}, it broke within {days}.",
        "The reimbursement for {invoice} still hasn't reached my account.",
        "Can you return the {amount} shipping fee since the parcel came late?",
        "I changed my mind about the {product}, how do I get reimbursed?",
    ],
    "account_access": [
        "The sign-in page says my credentials are incorrect even after a password change.",
        "I'm stuck at the two-step verification screen on my {device}, no code arrives.",
        "Your site locked my profile and I can't find a way to unlock it.",
        "I can no longer access my account since I changed phone numbers.",
        "The login button on the {app} does nothing when I press it.",
        "Someone changed my password without my permission, please help me regain access.",
        "I'm unable to get into my account on {browser}, it keeps asking me to sign in again.",
        "My one-time login code is rejected every time I type it.",
        "Please help me get back into my profile, the recovery email goes to an address I closed.",
        "Access to my account was blocked on {date} and I don't know why.",
    ],
    "shipping_delay": [
        "My parcel with order {order} was due on {date} and there's still no sign of it.",
        "The tracking link for {order} shows no movement for {days} now.",
        "Could you chase {courier} about my {product}? It is far behind schedule.",
        "It's been {days} and order {order} hasn't left your warehouse.",
        "The estimated arrival for my {product} keeps getting pushed later.",
        "I was told it would come by {date} but the package still isn't here.",
        "{courier} marked my parcel as attempted, but nobody came to the door and I still don't have it.",
        "My shipment of the {product} seems to be lost in transit.",
        "Why is order {order} still showing as 'preparing to ship' after {days}?",
        "The parcel has been sitting at the local depot for {days} without an update.",
    ],
    "damaged_item": [
        "My {product} showed up {damage} and I'd like it replaced.",
        "Unboxed the {gadget} today and it was {damage}.",
        "The {product} in order {order} is {damage}, the packaging was torn open.",
        "{courier} handed me my {product} {damage}, please advise on a replacement.",
        "There's a crack running across the {gadget} screen straight out of the box.",
        "The {product} I received was {damage}, clearly mishandled in transit.",
        "My {gadget} rattles inside and won't power on after delivery.",
        "Half the pieces of my {product} were {damage} when the box was opened.",
        "Order {order} came today with the {product} {damage}, can I get a new one?",
        "There's a deep scratch across the {gadget} that was delivered on {date}.",
    ],
    "cancel_subscription": [
        "I want to end my {plan} membership, please stop the recurring payments.",
        "Please close my subscription before it renews on {date}.",
        "How can I terminate the {plan} plan from the {app}? I don't see the option.",
        "Kindly deactivate my subscription, I won't be using the service anymore.",
        "Stop my {plan} plan from renewing by itself.",
        "I'd like to unsubscribe from the {plan} tier effective immediately.",
        "Please make sure my membership doesn't roll over next month.",
        "I'm done with the service, end my plan and don't bill my {card} again.",
        "Can you switch off recurring billing and end my account's {plan} plan?",
        "I need to quit my subscription, the {screen} won't let me do it.",
    ],
    "technical_bug": [
        "Whenever I tap the {screen} in the {app}, the whole app closes.",
        "The {screen} displays {error} on {browser} since {date}.",
        "Uploading a receipt gives {error} every time.",
        "The {app} on my {device} gets stuck on the loading logo.",
        "Prices on the {screen} overlap the product images on {browser}.",
        "Saving my profile throws {error} and nothing changes.",
        "Push alerts stopped arriving on my {device} a few days ago.",
        "The {screen} scrolls sideways and cuts off half the text on my {device}.",
        "I get {error} whenever I try to apply a discount code.",
        "Opening the {screen} makes the {app} hang for several seconds.",
    ],
    "feature_request": [
        "It'd be really helpful to have {feature} in the {app}.",
        "Have you considered offering {feature}? I'd use it daily.",
        "My team would benefit a lot from {feature}.",
        "Could a future update bring {feature}?",
        "I'd like to suggest {feature} for the {screen}.",
        "One improvement I'd love: {feature}.",
        "Please think about supporting {feature}, it would save me time.",
        "Is {feature} on your product roadmap at all?",
        "A small wish for the next version: {feature}.",
        "We need {feature} before we can roll this out to our whole office.",
    ],
    "privacy_data_request": [
        "Please erase {data} from your records and confirm when it's done.",
        "I'm requesting access to {data} under {law}.",
        "Send me an export of {data}, please.",
        "I no longer consent to you keeping {data}, delete it.",
        "Tell me which partners receive {data}.",
        "Under {law}, I ask you to stop processing {data}.",
        "How can I obtain everything in {data} that you have on file?",
        "Please remove {data} and close my profile for good.",
        "I'd like to know how long {data} is stored and why.",
        "My address has changed, please update the details you hold about me.",
    ],
}


def templates_json() -> dict:
    """What the demo writes to `templates.json`: the templates and the slot words they name."""
    named = {slot for items in TEMPLATES.values() for t in items for slot in re.findall(r"\{(\w+)\}", t)}
    return {"templates": TEMPLATES, "slots": {name: SLOTS[name] for name in sorted(named)}}
