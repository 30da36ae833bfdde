"""Knowledge base, ticket phrasings and reply templates for `attnops.demo.ticket_replies`.

Each intent has one knowledge-base article written from its `terms` (the concrete policy
numbers), the ticket phrasings customers use, and reply templates that resolve the ticket with
facts from the ticket and the article only.

Slots: ``{name}``, ``{order}`` ("#48213"), ``{product}``, ``{amount}`` ("$89.99"), ``{date}``
("March 3"), ``{minutes}``, ``{months}``, ``{region}`` and ``{plan}`` (the variant the ticket
asks about), ``{variant_term}`` (the article's term for that variant) and the intent's own
terms. ``[kept~flipped]`` in a reply marks a clause whose negation the `negation_flip` twin
flips; the faithful reply keeps the left side.
"""

from dataclasses import dataclass, field


def _bank(text: str) -> tuple[str, ...]:
    """Splits a ``|``-separated block into stripped, non-empty phrases."""
    return tuple(p.strip() for p in " ".join(text.split()).split("|") if p.strip())


@dataclass(frozen=True)
class Policy:
    """One intent's knowledge-base article and how tickets and replies use it.

    Attributes:
        article: Article template; its slots are `terms`.
        terms: Concrete policy values (numbers of days, prices, ...).
        swap_groups: Groups of term names whose values are interchangeable in a sentence (the
            `policy_term_swap` twin puts another valid term of the same article in its place).
        variants: Optional {variant: term name}: the ticket asks about one variant (a region,
            a plan) and the reply quotes that variant's term as ``{variant_term}``.
        tickets: Ticket cores (the request) with slots.
        replies: Reply templates; each starts lowercase so an opener can precede it. A leading
            "@word " keeps a template for tickets whose request contains "word", "@!word " for
            the others.
    """

    article: str
    terms: dict[str, str]
    swap_groups: tuple[tuple[str, ...], ...]
    tickets: tuple[str, ...]
    replies: tuple[str, ...]
    variants: dict[str, str] = field(default_factory=dict)


POLICIES: dict[str, Policy] = {
    "refund_policy": Policy(
        article="Items can be returned for a full refund within {window} of delivery if they are "
        "unused and in their original packaging. Once the return reaches our warehouse, the "
        "money goes back to the original payment method within {payout}. Return shipping is "
        "free on orders over {free_over}.",
        terms={"window": "30 days", "payout": "5 business days", "free_over": "$50"},
        swap_groups=(("window", "payout"),),
        tickets=_bank("""I paid {amount} for the {product} (order {order}) and it's not what I
            expected. Can I send it back for a refund? | Can I still return the {product} from
            order {order}? I paid {amount} and it arrived on {date}. | I want to return the
            {product} I bought on {date}, order {order}. How does the refund work? | What's your
            refund policy? I'd like my money back for the {product} in order {order}. | The
            {product} doesn't suit me. Order {order}, delivered on {date}. Can I get a refund?
            | How long do I have to return the {product}? I paid {amount} for it, order
            {order}."""),
        replies=_bank("""you can return the {product} from order {order} within {window} of
            delivery as long as it is unused, and the money goes back to your original payment
            method within {payout} of the return reaching our warehouse. | returns are accepted
            within {window} of delivery, so the {product} from order {order} qualifies if it is
            unused and in its original packaging. The refund reaches your original payment
            method within {payout} after the return arrives. | the {product} from order {order}
            can be returned for a full refund within {window} of delivery. It [must be
            unused~does not need to be unused] and in its original packaging, and the money is
            back on your payment method within {payout}. | since the {product} was delivered on
            {date}, you can return it within {window} of delivery for a full refund. Once it
            reaches our warehouse, the money goes back to your payment method within
            {payout}."""),
    ),
    "shipping_times": Policy(
        article="Standard shipping to the United States takes {us}, standard shipping to Canada "
        "takes {canada}, and standard shipping to Europe takes {europe}. Express shipping costs "
        "{express_fee} and arrives in {express} within the United States. Express shipping is not "
        "available to Canada or Europe.",
        terms={
            "us": "3 to 5 business days",
            "canada": "7 to 10 business days",
            "europe": "10 to 14 business days",
            "express": "2 business days",
            "express_fee": "$14.99",
        },
        swap_groups=(("us", "canada", "europe", "express"),),
        variants={"the United States": "us", "Canada": "canada", "Europe": "europe"},
        tickets=_bank("""How long does shipping to {region} take? I just placed order {order}
            for the {product}. | I ordered the {product} on {date} (order {order}). When will it
            arrive in {region}? | What are your delivery times to {region}? Thinking of ordering
            the {product}. | Order {order} is going to {region}. How many days until the
            {product} shows up? | Do you ship the {product} to {region}, and how long does it
            take?"""),
        replies=_bank("""standard shipping to {region} takes {variant_term}, so your {product}
            should arrive within that time. | standard shipping to {region} takes
            {variant_term}, so order {order} with the {product} should reach you within that
            time. | the {product} ships to {region} with standard shipping, which takes
            {variant_term}. Express shipping [is not available~is available] to Canada or
            Europe. | delivery of order {order} to {region} takes {variant_term} with standard
            shipping."""),
    ),
    "plan_prices": Policy(
        article="The Basic plan costs {basic} per month, the Plus plan {plus} per month and the "
        "Pro plan {pro} per month. Paying yearly saves {yearly} on any plan. You can switch "
        "plans at any time, and the new price applies from the next billing cycle.",
        terms={"basic": "$9", "plus": "$19", "pro": "$39", "yearly": "20%"},
        swap_groups=(("basic", "plus", "pro"),),
        variants={"Basic": "basic", "Plus": "plus", "Pro": "pro"},
        tickets=_bank("""How much is the {plan} plan per month? | I'm thinking about switching
            to the {plan} plan. What does it cost? | What's the monthly price of {plan}, and is
            there a discount if I pay yearly? | Quick question: if I move to the {plan} plan
            today, how much will I pay each month? | Can you tell me the price of the {plan}
            plan?"""),
        replies=_bank("""the {plan} plan costs {variant_term} per month, and paying yearly saves
            {yearly}. | the {plan} plan costs {variant_term} per month. You can switch plans at
            any time and the new price applies from the next billing cycle. | the {plan} plan
            is {variant_term} per month, and paying yearly saves {yearly} on any plan. | the
            {plan} plan costs {variant_term} per month. The new price [applies~does not apply]
            from the next billing cycle after you switch."""),
    ),
    "warranty": Policy(
        article="Every product comes with a {warranty} warranty against manufacturing defects, "
        "counted from the delivery date, and batteries have a {battery} warranty. The warranty "
        "does not cover accidental drops or water damage. To claim, send your order number and "
        "a photo of the defect, and we repair or replace the item within {repair}.",
        terms={"warranty": "2-year", "battery": "1-year", "repair": "10 business days"},
        swap_groups=(("warranty", "battery"),),
        tickets=_bank("""My {product} stopped working after {months} months. Order {order}. Is
            that covered by the warranty? | The {product} I bought {months} months ago has a
            defect. Can you repair it under warranty? Order {order}. | Is the {product}
            covered by a warranty? Mine broke after {months} months (order {order}). | Order
            {order}: the {product} has a manufacturing defect after just {months} months. What
            are my options?"""),
        replies=_bank("""the {product} has a {warranty} warranty against manufacturing defects,
            so after {months} months it is still covered. Send a photo of the defect with order
            {order} and we will repair or replace it within {repair}. | your {product} is
            covered by our {warranty} warranty for manufacturing defects. Please send a photo of
            the defect with order {order}, and we repair or replace it within {repair}. | the
            {product} is still within its {warranty} warranty. The warranty [does not cover~covers]
            accidental drops or water damage, so send a photo of the defect for order {order} and
            we will check it."""),
    ),
    "password_reset": Policy(
        article="To reset your password, select Forgot password on the sign-in page and enter "
        "your account email. The reset link is valid for {link}. After {attempts} failed "
        "sign-in attempts the account is locked for {lock}, and you do not need to contact "
        "support to unlock it.",
        terms={"link": "30 minutes", "attempts": "5", "lock": "15 minutes"},
        swap_groups=(("link", "lock"),),
        tickets=_bank("""I forgot my password and can't sign in. How do I reset it? | The
            password reset link you sent me doesn't work anymore. What should I do? | I'm locked
            out after too many tries. How do I get back in? | How can I change my password? I
            can't remember the old one. | My account says it's locked and I need to reset my
            password."""),
        replies=_bank("""@!lock select Forgot password on the sign-in page and enter your account
            email. The reset link is valid for {link}. | @!lock the reset link is valid for
            {link}, so select Forgot password on the sign-in page to get a new one. | @lock after
            {attempts} failed sign-in attempts the account is locked for {lock}, and you [do not
            need to~need to] contact support to unlock it. | @lock your account is locked for
            {lock} after {attempts} failed attempts. After that, select Forgot password on the
            sign-in page to reset your password."""),
    ),
    "order_cancellation": Policy(
        article="Orders can be cancelled free of charge within {free} of being placed, from the "
        "Orders page. Once an order has shipped it can no longer be cancelled, but it can "
        "still be returned. Cancelled orders are refunded within {refund}.",
        terms={"free": "2 hours", "refund": "3 business days"},
        swap_groups=(("free", "refund"),),
        tickets=_bank("""I placed order {order} {minutes} minutes ago and want to cancel the
            {product}. | Can I still cancel order {order}? I ordered the {product} {minutes}
            minutes ago. | Please cancel order {order}, I changed my mind about the {product}.
            It was {minutes} minutes ago. | I ordered the {product} by mistake {minutes} minutes
            ago and paid {amount}. Order {order}. Can I cancel it?"""),
        replies=_bank("""order {order} was placed {minutes} minutes ago, so it is within {free} of
            being placed and can be cancelled free of charge from the Orders page. The refund
            arrives within {refund}. | you placed order {order} {minutes} minutes ago, which is
            within {free}, so you [can~cannot] cancel it free of charge from the Orders page. |
            orders can be cancelled free of charge within {free} of being placed, so order
            {order} with the {product} can still be cancelled. You will be refunded within
            {refund}."""),
    ),
    "damaged_item": Policy(
        article="If an item arrives damaged, report it within {report} of delivery with a photo "
        "of the damage. We ship a free replacement within {ship}, and you do not need to send "
        "the damaged item back.",
        terms={"report": "7 days", "ship": "2 business days"},
        swap_groups=(("report", "ship"),),
        tickets=_bank("""My {product} from order {order} arrived damaged on {date}. What can I
            do? | The box was crushed and the {product} is broken. Order {order}, delivered on
            {date}. | Order {order} came today and the {product} is cracked. I paid {amount}
            for it. | The {product} I received on {date} is damaged (order {order}). I'd like a
            replacement."""),
        replies=_bank("""please send a photo of the damage within {report} of delivery, and we
            will ship a free replacement of the {product} for order {order} within {ship}. | damaged
            items must be reported within {report} of delivery with a photo, and we ship a free
            replacement within {ship}. You [do not need to~need to] send the damaged item
            back. | we will ship a free replacement for the {product} in order {order} within
            {ship} once you send a photo of the damage. You do not need to send the damaged item
            back."""),
    ),
    "billing_dates": Policy(
        article="Subscriptions are billed on the {bill_day} of each month. We email the invoice "
        "{notice} before each charge, and it is also available under Billing in your account. "
        "If a payment fails, we retry it after {retry}, and your account stays active in the "
        "meantime.",
        terms={"bill_day": "1st", "notice": "3 days", "retry": "4 days"},
        swap_groups=(("notice", "retry"),),
        tickets=_bank("""When exactly will I be charged for my subscription each month? | I was
            charged {amount} on {date}. Where can I find the invoice? | My payment failed on
            {date}. Will my account be suspended? | Which day of the month do you bill my card?
            | I didn't get an invoice for the {amount} charge. When are invoices sent?"""),
        replies=_bank("""@!fail subscriptions are billed on the {bill_day} of each month, and we
            email the invoice {notice} before each charge. | @invoice the invoice is emailed
            {notice} before each charge and is also available under Billing in your account. |
            @invoice the invoice for the {amount} charge on {date} is available under Billing in
            your account, and future invoices are emailed {notice} before each charge. | @fail
            if a payment fails, we retry it after {retry}, and your account [stays active~does
            not stay active] in the meantime. | @fail we retry the payment that failed on {date}
            after {retry}, and your account [stays active~is suspended] in the meantime. | @!fail
            we bill subscriptions on the {bill_day} of each month. You can also find every
            invoice under Billing in your account."""),
    ),
}

GREETINGS = ("Hi,", "Hello,", "Hey there,", "Hi team,", "Good morning,", "", "", "")
SIGN_OFFS = ("Thanks,\n{name}", "Best,\n{name}", "- {name}", "Cheers, {name}", "{name}")
OPENERS = ("Hi {name}, ", "Hello {name}, ", "Thanks for writing, {name}: ", "{name}, ", "")
# Holding replies: what a faithful reply says when the intent's article is missing from the
# prompt (withdrawn, or never written). Only slots every ticket of the intent mentions (refunds:
# product and order; shipping: product and region; plans: the plan; the others: none), in the
# ticket's own words where they can: of the phrasings tried, restating the request scored
# lowest on the hallucination detector's text view. No term, no number.
HOLDING_REPLIES: dict[str, str] = {
    "refund_policy": "you asked about returning the {product} from order {order}; our returns "
    "team will reply to you by email.",
    "shipping_times": "you asked how long shipping to {region} takes for the {product}; our "
    "shipping team will reply to you by email.",
    "plan_prices": "you asked about the price of the {plan} plan; our billing team will reply "
    "to you by email.",
    "warranty": "you asked whether your product is still under warranty; our repairs team will "
    "reply to you by email.",
    "password_reset": "you asked how to get back into your account; our support team will reply "
    "to you by email.",
    "order_cancellation": "you asked to cancel your order; our orders team will reply to you by "
    "email.",
    "damaged_item": "you told us your item arrived damaged; our returns team will reply to you "
    "by email.",
    "billing_dates": "you asked when you will be charged; our billing team will reply to you by "
    "email.",
}

# Contacts that no ticket or article contains: the `invented_contact` twin adds one.
INVENTED_CONTACTS = _bank("""You can also email support@shopwell.com for help. | If you need
    more help, call us on +1 (800) 555-0142. | I have opened case #C-{case} for you. | Our
    billing team can be reached at billing@shopwell.com. | For a faster answer, message us on
    WhatsApp at +44 20 7946 0{case}.""")
MONTHS = _bank("January | February | March | April | May | June | July | August | September |"
               "October | November")  # fmt: skip
