"""Phrase banks for the synthetic support tickets in `attnops.demo.tickets`.

Banks are written as ``|``-separated text so that hundreds of paraphrases stay readable.
Slots filled per ticket: ``{thing}`` (a noun phrase such as "my parcel"), ``{product}``,
``{order}`` ("#A1234567"), ``{amount}`` ("$49.99"), ``{date}``, ``{name}``, ``{city}``, and
``{nl}`` (a line break).
Within a core bank the first entries are the common phrasings; the tail is rarer and more
indirect (the sampler gives earlier entries more weight).
"""


def _bank(text: str) -> tuple[str, ...]:
    """Splits a ``|``-separated block into stripped, non-empty phrases."""
    return tuple(p.strip() for p in " ".join(text.split()).split("|") if p.strip())


# Core requests: the part of a ticket that carries the intent. Negated / confusable phrasings
# ("I don't want to cancel, just change where it ships") live next to their true intent.
CORES: dict[str, tuple[str, ...]] = {
    "refund_request": _bank("""I'd like a refund for {thing} | I want my money back | please refund
        {thing} | I would like to request a refund | how do I get a refund for this | please
        reimburse me | can you return the funds to my card | give me my money back | please process
        a refund for {order} | I'd like to start a refund for {thing} | could you refund the
        {amount} I paid | I don't want a replacement, I want a refund | please put the money back on
        my card | I expect to be paid back in full | can I have the {amount} back | I'd rather have
        the cash than a replacement | credit the purchase back to my account please | I'm sending it
        back and want the full amount credited back | is it possible to get reimbursed for {thing} |
        kindly issue a refund to my original payment method | please send the payment back to my
        PayPal | I'm asking for the purchase price to be returned to me | I want a full
        reimbursement | not keeping it, I want to be paid back | how can I get this money returned
        to me | I'd like to open a refund request for {order} | I want my {amount} returned, not
        store credit"""),
    "refund_status": _bank("""where is my refund | has my refund been processed yet | any update on
        the refund I requested | my refund still hasn't shown up | what's the status of my refund
        for {order} | I already asked for a refund, when will it arrive | I returned {thing} weeks
        ago and still no money | you approved my refund two weeks ago and nothing has arrived | when
        will I see the reimbursement on my statement | the refund was confirmed but my bank shows
        nothing | still waiting on my money back from the return | can you check whether the refund
        went through | I got an email saying refund issued but I don't see it | the credit you
        promised never appeared on my account | I'm not asking for a new refund, just where the one
        I already requested is | is my reimbursement on its way | I sent the item back and haven't
        heard anything about the money | your warehouse received my return, so where's the cash | my
        refund seems stuck in processing | it has said refund pending for ten days now | did the
        reimbursement for {order} get sent out | I still have not received the {amount} you said you
        would pay back | you told me the money would be back in 5 days and it isn't | could you tell
        me when the refund will land | the return was accepted ages ago, when do I get paid"""),
    "cancel_order": _bank("""please cancel my order | I want to cancel {order} | can I still cancel
        {thing} | I need to cancel this order | I changed my mind, don't send it | I ordered by
        mistake, please cancel it | stop the shipment, I no longer need it | is it too late to
        cancel {order} | please void my purchase before it goes out | can you call off this order
        before it ships | I need to cancel, I found it cheaper elsewhere | don't ship {thing}, I
        want to cancel the whole order | I accidentally placed the order twice, please cancel one of
        them | please scrap the order I placed this morning | withdraw my order please | I'd like to
        back out of this purchase before it's dispatched | halt my order, I don't need it anymore |
        please make sure this order never ships | I no longer want the {product}, please cancel | I
        regret ordering this, please undo the order | how do I cancel an order that hasn't shipped
        yet | forget the order, I'm not going ahead with it | I'm not moving after all, I just want
        the order cancelled | please terminate order {order} | nope, I don't need it, cancel
        everything I bought today"""),
    "change_address": _bank("""I need to change my shipping address | I don't want to cancel, just
        change where it ships | can you send {thing} to a different address | I moved, please update
        the delivery address on {order} | the address on my order is wrong, can you fix it | please
        ship to my office instead of my home | I typed the wrong street number, can you correct it |
        can I redirect the package to my parents' place in {city} | please update the delivery
        address before it ships | there's a wrong zip code on my order, please fix it | please
        deliver to my new apartment instead | I won't be home, can it go to my work address | the
        apartment number is missing from the address | I'd like the parcel delivered somewhere else
        | keep the order but change the destination | please reroute {thing} to my new address | I
        put my old address on it by mistake | is it possible to amend the shipping details on
        {order} | the house number on the label is off by one | I'm relocating to {city} next week,
        the order needs to go to the new place | change the ship-to address please | the postcode I
        entered is incorrect | send it to my sister's house instead | please don't cancel anything,
        I only need the address corrected | I need to edit where this is being delivered"""),
    "damaged_item": _bank("""the item arrived broken | {thing} arrived damaged | the box was crushed
        and the thing inside is cracked | it showed up in pieces | the screen was shattered when I
        opened it | it's the right item but it arrived damaged | there's a big dent on the side, it
        came like that | the glass was broken on arrival | there are scratches all over it straight
        out of the box | the packaging was soaked and the product is ruined | one of the legs
        snapped off during shipping | the {product} is cracked down the middle | it got wrecked in
        transit | the seal was broken and the contents leaked everywhere | the handle was snapped
        when I unpacked it | the corner is chipped and it wobbles, it came that way | it's the
        correct one but it's bent out of shape | the case has a huge crack, it was like that in the
        box | the courier must have dropped it, it's busted | half of the set came shattered | the
        fabric was torn when it arrived | I opened the parcel and the lid is broken | the product
        arrived in unusable condition | it came with a big hole in it | it's dented and won't close,
        it was delivered that way"""),
    "wrong_item": _bank("""I got the wrong item | this isn't what I ordered | you sent me the
        {product} but I ordered something else | I received someone else's order | it arrived fine
        but it's the wrong color | the wrong size was delivered | the item isn't damaged, it's just
        not the one I bought | the box had a completely different product in it | I ordered blue and
        got red | this is not the model I paid for | you mixed up my order | I received two of the
        same thing and none of the other | the package contained the wrong book | nothing's broken,
        but it's the wrong item entirely | I was sent a different product than the one on my receipt
        | they sent me the small instead of the large | this looks like another customer's package |
        it's not the item I picked on the website | you shipped me a charger instead of headphones |
        the order was swapped with somebody else's | I got a totally different item | it's in
        perfect condition, just the wrong one | I received the wrong variant | the parcel contains
        something that isn't on my order | whoever packed this grabbed the wrong thing off the
        shelf"""),
    "payment_failed": _bank("""my card keeps getting declined | the payment won't go through | I
        can't complete checkout, it says payment failed | I tried to pay but it errors out | my
        payment was rejected even though the card is fine | checkout fails at the last step | it
        won't accept my card | I get transaction declined every time | your site won't let me pay |
        I can't place the order because the payment keeps failing | my PayPal payment failed on your
        site | I've tried three cards and none of them work | the pay button just spins and then
        gives an error | it says my card was declined but I have plenty of funds | I'm unable to buy
        anything, the payment step breaks | there's a payment error at checkout | my bank says
        nothing was attempted but your site says declined | I wasn't charged, the payment just
        didn't work | Apple Pay doesn't work at checkout | why is my payment not going through |
        card authorization failed, I can't finish the purchase | I want to buy this but your system
        won't take my money | the purchase keeps failing at the payment page | every time I hit pay
        it bounces back with an error | I'm stuck on the last screen, the money part just won't
        work"""),
    "billing_dispute": _bank("""I was charged twice for the same order | there's a charge on my
        statement I don't recognize | you billed me more than the listed price | I was charged for
        an order I cancelled | I didn't authorize this payment | the amount taken from my card is
        wrong | why was I charged {amount} | I'm seeing a duplicate charge | I was overcharged | the
        payment went through but for the wrong amount | you charged my card after I cancelled my
        subscription | there are two identical charges on my account | I want to dispute a charge |
        the invoice total doesn't match what I agreed to pay | I was billed for shipping that was
        supposed to be free | an unknown transaction from your company appeared on my card | the
        payment didn't fail, it went through twice | my bank shows a charge of {amount} I never made
        | you took money from my account without permission | I paid once but got charged two times
        | the price at checkout was lower than what you billed me | I'm being charged a fee I never
        agreed to | I'm contesting the charge of {amount} from {date} | my credit card statement has
        an extra charge from you | my statement shows you took {amount} more than the order
        total"""),
    "account_locked": _bank("""my account is locked | I've been locked out of my account | it says
        my account is suspended | I can't sign in, it says too many attempts | my account got
        blocked for no reason | it won't let me in, it says account disabled | I know my password
        but it still says the account is locked | my profile has been frozen | you deactivated my
        account without telling me | I'm blocked from logging in even with the right password |
        please unlock my account | my account is temporarily restricted, how do I get back in |
        after the security check my account was locked | the login screen says my account is on hold
        | my account was flagged and now I can't access it | I got a message that my account is
        suspended pending review | can you lift the lock on my account | I'm shut out of my account
        after entering a wrong code | the system locked me out after three tries | it says account
        locked, contact support | I can't get into my account because it's been disabled |
        reactivate my account please | why was my account blocked | the password is right but access
        is denied because of a lock | your security system has frozen me out of my own profile"""),
    "password_reset": _bank("""I forgot my password | how do I reset my password | the password
        reset email never arrives | I need a new password | the reset link says expired | I can't
        remember my login password | please help me change my password | the forgot password link
        doesn't do anything | my password isn't working and I need to set a new one | send me a
        password reset link | I don't remember what password I used | the reset code you sent
        doesn't work | the new password I chose isn't accepted | my account isn't locked, I just
        forgot the password | how can I recover my password | I keep typing my password wrong, can I
        make a new one | the password change page gives an error | I need to reset my login
        credentials | reset my password please | the link to reset my password goes to a blank page
        | I clicked reset password but got nothing in my inbox | I'm trying to set a new password
        but it won't save | what was my password again, I need to pick a fresh one | please send me
        a link so I can choose a new password | I can't get in because I lost track of my password,
        how do I make a new one"""),
    "update_email": _bank("""I need to change the email on my account | please update my email
        address | I no longer use that email, can you switch it | how do I change my login email |
        my old email was shut down, I need a new one on the account | can you replace the email
        address on my profile | I want all notifications going to a different email | the email on
        file is wrong | please change my contact email | I made a typo in my email when I signed up
        | I'd like to use my work email instead | my account is tied to an email I can't access
        anymore | how can I edit the email linked to my account | I switched providers so my email
        changed | swap my account email for a new one | I'm not getting your emails because the
        address on file is outdated | the email change form keeps failing | please move my account
        to a new email | I need my login email corrected | I want a different email associated with
        this account | I want to change my email, not my password | my email address has changed,
        please update it | the confirmation for my new email never came | my inbox changed, please
        point the account at the new one | the account should use my new work inbox from now
        on"""),
    "track_order": _bank("""where is my order | when will my package arrive | can you give me a
        tracking number | has {thing} shipped yet | my order hasn't shipped yet, what's going on |
        how long until {order} gets here | the tracking hasn't updated in days | is my order on the
        way | what's the delivery date for {order} | I'd like to know where my parcel is | tracking
        says in transit for a week | can I get an ETA on my delivery | the package is late | it's
        been ten days and my order still isn't here | when does my stuff ship | what's the status of
        my order | my tracking link doesn't work, where is it | should my package have arrived by
        now | still waiting for my delivery | is there any news on my shipment | the estimated
        delivery date has passed | I haven't received any shipping confirmation | which courier is
        delivering my order | any idea when my parcel will show up | the order still says
        processing, when will it go out"""),
    "missing_package": _bank("""tracking says delivered but I never got it | the package was marked
        delivered but it's not here | my parcel is missing, it says it was dropped off | I think my
        package was stolen from my porch | the courier claims it was delivered but nothing arrived |
        it says left at front door, there is nothing at my door | my neighbor doesn't have it either
        and the order says delivered | the driver marked it delivered yesterday and I have nothing |
        it was delivered to the wrong house | the box never made it to me even though tracking says
        it did | the order is confirmed delivered, but I haven't received anything | someone signed
        for my package and it wasn't me | I checked the mailroom and my delivered parcel isn't there
        | my order was lost, it shows delivered | the photo proof of delivery isn't my house | you
        say it arrived, I say it didn't | nothing came even though I got the delivered email | it's
        not a delay, tracking says it was delivered and it's gone | the parcel disappeared after
        being marked as delivered | I never received {order} but it's showing as delivered | the
        package was marked delivered at 2pm and it's not here | my package went missing after
        delivery | the app says my parcel was handed over, but nobody here got it | my doorstep is
        empty even though the status changed to delivered | the carrier insists it arrived and it
        simply hasn't"""),
    "product_question": _bank("""does the {product} come with a charger | is this available in other
        colors | what are the dimensions of the {product} | is it compatible with my phone | can the
        {product} go in the washing machine | does this come with batteries included | how much does
        the {product} weigh | is the {product} waterproof | what material is it made of | does it
        come in a larger size | will this fit a queen bed | is the {product} suitable for kids |
        before I buy, can you tell me if it's dishwasher safe | is there a cheaper version of this |
        does this work with 220V outlets | what's the difference between the two models | I'm
        thinking of buying the {product}, is it good for beginners | does it include a manual in
        Spanish | does the fabric stretch | is the {product} in stock | will the {product} be
        restocked soon | does this need assembly | what's the capacity of the {product} | I have a
        question about the specs before ordering | how loud is it when running"""),
    "warranty_claim": _bank("""I want to make a warranty claim | it stopped working after two
        months, is it under warranty | the {product} broke after normal use, I'd like it repaired
        under warranty | it worked fine at first but now it won't turn on | the motor died after six
        weeks | is this defect covered by the guarantee | it arrived fine but broke down last week |
        the zipper failed after a month of light use | I need a repair, it's still within the
        warranty period | it's faulty now, can you replace it under the guarantee | the {product}
        started making a grinding noise and then stopped | how do I claim the one-year warranty |
        the stitching came apart after a few uses | it wasn't damaged on delivery, it just died
        after a while | my {product} has a manufacturing defect that showed up recently | it won't
        charge anymore and it's only three months old | please honor the warranty, it broke on its
        own | the button stopped responding after some weeks | I've had it since spring and now it
        leaks | can I get a free replacement since it's still under warranty | it overheats now, it
        used to be fine | the hinge wore out way too soon | it quit working and I still have the
        receipt | the product failed within the guarantee period | after a few months of normal use
        it just gave up"""),
    "cancel_subscription": _bank("""please cancel my subscription | I want to end my membership |
        how do I stop the monthly plan | don't renew my subscription next month | I'd like to cancel
        my premium plan | turn off auto-renewal please | I no longer want the monthly box |
        unsubscribe me from the paid plan | I want to stop being billed every month, please end the
        plan | please close my membership at the end of this period | I'm not cancelling an order, I
        want to end the subscription | how can I opt out of the yearly renewal | I don't use the
        membership anymore, stop it | end my trial before it turns into a paid plan | please
        terminate my recurring delivery plan | I want to downgrade to the free tier and stop paying
        | can you make sure my plan doesn't renew | I'm done with the subscription | stop sending
        the monthly box, I quit | I'd like to leave the loyalty program that costs {amount} a month
        | I don't want to pay for the membership anymore | please stop my plan from renewing | how
        do I get out of the monthly plan | I'd like to end my subscription before the next billing
        date | my free trial should not convert to paid, please stop it"""),
    "missing_item": _bank("""an item is missing from my order | the box arrived but one of the
        things I ordered wasn't in it | I only got two of the three items | the package came without
        the {product} | part of my order is missing | the charger wasn't in the box | the parcel was
        delivered but it's incomplete | I'm missing one piece of the set | the accessories listed
        weren't included | the screws for assembly are missing | you forgot to pack one of my items
        | the delivery was short by one item | half my order showed up, where's the rest | the
        receipt lists four items but there are only three | the lid is not in the box at all | the
        parcel arrived fine, it's just missing the {product} | I got the package but not everything
        inside it | one item from the order never came with the rest | the manual and cable were
        left out | the set should have six glasses, I only got five | one of the two pairs didn't
        come | the bundle came without the case | I paid for two but only one was in the parcel |
        the packing slip lists an item that isn't there | everything arrived except the
        {product}"""),
    "promo_code": _bank("""my discount code isn't working | the promo code says invalid | I forgot
        to apply my coupon, can you add it | the voucher didn't take anything off the price | the
        20% off code is rejected at checkout | the discount from my loyalty points won't apply | the
        coupon expired a day early | the welcome discount wasn't applied to {order} | the sale price
        didn't show up in my cart | can you honor the code from your newsletter | the referral
        credit never showed up | the checkout ignores my discount code | the free shipping code
        doesn't work | my student discount disappeared at the last step | I entered the promo code
        but paid full price | it says the coupon can't be combined, is that right | where do I enter
        a voucher in the app | my birthday discount isn't available | the code from the email gives
        an error | the newsletter discount won't go through at checkout | checkout says my code was
        already used but I never used it | is there a way to apply a code after ordering | the
        voucher field keeps saying not eligible | the discount disappeared when I changed the
        quantity | my coupon only took off shipping, not the 10% it promised"""),
    "delete_account": _bank("""please delete my account | I want my account and data removed | how
        do I close my account for good | erase all my personal data | I'd like to permanently
        deactivate my profile | remove me from your system completely | I don't just want it locked,
        I want it deleted | close my account and delete my order history | under GDPR I request
        deletion of my data | I want to wipe my account | please remove my profile and stop all
        emails | I'm leaving, get rid of my account | how can I delete my customer profile | I never
        want to use this account again, delete it | I want you to forget everything you have on me |
        shut down my account permanently | I want to exercise my right to erasure | please confirm
        my account has been deleted | I want to stop being a customer and have my profile erased |
        please wipe my details from your database | I'm done with your service, remove my account
        entirely | how do I get my account deleted, not just logged out | take down my profile and
        everything attached to it | I'd like all my information removed and the account gone | no
        more account please, erase it"""),
    "request_invoice": _bank("""I need an invoice for my order | can you send me a receipt | please
        issue a VAT invoice | I need a proper invoice with my company name on it | where can I
        download the invoice for {order} | my accountant needs an itemized receipt | the invoice is
        missing from my account | can you add my tax ID to the invoice | I need a copy of the bill
        for my expenses | please email me the invoice for the {amount} purchase | I lost my receipt,
        can I get another one | can you reissue the invoice with my business address | I need proof
        of purchase for my records | the receipt doesn't show the VAT, I need that for work | send
        me a PDF of the invoice please | I'm not disputing the charge, I just need the invoice | I
        need a receipt to claim this back from my employer | can you generate an invoice for my last
        three orders | can I get the paperwork for my purchase for tax purposes | my company needs a
        formal bill for {order} | please send documentation of the payment for my expense report | I
        need the invoice reissued to my company | is there a way to get an itemised bill | could I
        get a receipt with the VAT number shown | my finance team is asking for the invoice"""),
}

# Terse 2-6 word versions, as typed into chat.
SHORT_CORES: dict[str, tuple[str, ...]] = {
    "refund_request": _bank(
        "refund please | want my money back | need a refund | can I get refunded"
    ),
    "refund_status": _bank(
        "where's my refund | refund still not here | any refund update | still no refund"
    ),
    "cancel_order": _bank(
        "cancel my order | please cancel it | need to cancel | don't ship it, cancel"
    ),
    "change_address": _bank(
        "wrong address on order | change shipping address | new delivery address"
    ),
    "damaged_item": _bank(
        "item arrived broken | it came damaged | arrived smashed | broken on arrival"
    ),
    "wrong_item": _bank(
        "wrong item received | not what I ordered | got the wrong size | wrong product"
    ),
    "payment_failed": _bank(
        "card declined at checkout | payment keeps failing | can't pay | payment error"
    ),
    "billing_dispute": _bank("charged twice | double charged | wrong amount charged | overcharged"),
    "account_locked": _bank("account locked | locked out of account | my account is suspended"),
    "password_reset": _bank(
        "forgot my password | reset password | password reset link not working"
    ),
    "update_email": _bank("change my email | update email address | new email for my account"),
    "track_order": _bank(
        "where is my order | where's my package | order status | tracking not updating"
    ),
    "missing_package": _bank(
        "says delivered but nothing | package stolen from porch | delivered, not here"
    ),
    "product_question": _bank(
        "is it waterproof | does it come in black | is this in stock | what size"
    ),
    "warranty_claim": _bank("warranty claim | stopped working, warranty | broke after a month"),
    "cancel_subscription": _bank("cancel my subscription | stop auto renewal | end my membership"),
    "missing_item": _bank("item missing from box | one item missing | order incomplete"),
    "promo_code": _bank("promo code not working | coupon invalid | discount not applied"),
    "delete_account": _bank("delete my account | remove my data | close my account pls"),
    "request_invoice": _bank("need an invoice | send me a receipt | invoice please"),
}

GREETINGS_FORMAL = _bank("Hello, | Dear support team, | Good morning, | Hi, | Dear Sir or Madam, |")
GREETINGS_CASUAL = _bank("hi | hey | hello | hi there | hey guys | yo | morning |")
CLOSINGS_FORMAL = _bank("""Kind regards,{nl}{name} | Thank you in advance. | Best regards,{nl}{name}
    | Thanks for your help, {name} | I look forward to your reply. | Many thanks. | Regards, {name}
    | Sincerely,{nl}{name}""")
CLOSINGS_CASUAL = _bank(
    "thanks | thx | ty | cheers | thanks!! | pls help | thank you | asap please"
)

# Intent-free background sentences; any intent may carry them.
CONTEXT_ANY = _bank("""I've been a customer for years. | This is the second time I'm writing about
    this. | I tried the help center but couldn't find an answer. | Your chatbot was no help. | I'm
    using the app on my phone. | I usually love shopping with you. | Sorry if this is the wrong
    place to ask. | I called yesterday but the line was busy. | I'm a bit frustrated, to be honest.
    | My friend recommended your store. | I hope someone can help me quickly. | I'm writing on
    behalf of my mother. | It's my first time contacting support. | I read the FAQ already.""")
# Background about an existing order; only for intents that involve one.
CONTEXT_ORDER = _bank("""I ordered the {product} {date}. | I'm writing about {order}. | I paid
    {amount} for it. | It was a gift for my partner. | I placed the order {date}. | The order was
    {order}, around {amount}. | I bought the {product} {date}. | It's order {order}. | I ordered
    from the website, not the app. | It was meant for my son's birthday. | Order number is {order}.
    | Ref {order}, {amount}.""")
ORDER_INTENTS = frozenset(
    _bank("""refund_request | refund_status | cancel_order | change_address | damaged_item |
        wrong_item | track_order | missing_package | billing_dispute | warranty_claim | missing_item
        | request_invoice""")
)

# Background mentioning *other* intents' vocabulary; value = intents it would contradict.
DISTRACTORS: dict[str, frozenset[str]] = {
    s: frozenset(excluded.split())
    for s, excluded in (
        ("Last time you sorted out my refund quickly, so thanks for that.", ""),
        ("My previous order arrived damaged, but that was fixed already.", ""),
        ("I reset my password last month, in case that matters.", "password_reset"),
        ("The payment went through without problems.", "payment_failed billing_dispute"),
        ("My address on file is correct.", "change_address"),
        ("I can log in to my account fine.", "account_locked password_reset"),
        ("I was charged the right amount.", "billing_dispute payment_failed promo_code"),
        ("I know cancelling isn't always possible.", ""),
        ("I'm not asking for a refund yet.", "refund_request refund_status"),
        ("The tracking updates were great, by the way.", "track_order"),
        (
            "I don't need to change anything on my account.",
            "update_email password_reset delete_account cancel_subscription change_address",
        ),
        ("Once I had the wrong size sent to me, but that was a while ago.", ""),
        (
            "The warranty card was in the box.",
            "track_order missing_package cancel_order change_address product_question "
            "payment_failed",
        ),
        ("My email and phone number haven't changed.", "update_email"),
    )
}

ECHO_FRAMES = _bank("""My previous ticket ("{x}") was solved, this is a different problem. | Last
    month I wrote "{x}" and you fixed that quickly. | Earlier this year I messaged you with "{x}",
    but that one is closed. | Unlike my last message ("{x}"), this one is about something
    else.""")
FIRST_NAMES = _bank(
    "Anna | Ben | Carla | David | Elif | Farid | Grace | Hiro | Ines | Jonas | Kofi |"
    "Lena | Marco | Nadia | Omar | Priya | Quinn | Rosa | Sam | Tomás | Uma | Wei"
)
LAST_NAMES = _bank(
    "Smith | Garcia | Chen | Okafor | Müller | Rossi | Kowalski | Tanaka | Silva | Haddad"
)
CITIES = _bank(
    "Denver | Leeds | Austin | Lyon | Porto | Toronto | Dublin | Phoenix | Kraków | Oslo"
)
PRODUCTS = _bank("""AeroBlend blender | TrailLite backpack | NovaSound headphones | CozyKnit sweater
    | PixelView monitor | BrewMaster coffee maker | StrideMax running shoes | LumaDesk lamp |
    AquaPure water bottle | ChefPro knife set | SnugNest duvet | ZenBrew kettle | FlexFit yoga mat |
    RoboVac vacuum | GlowSkin serum | PocketCam camera""")
THINGS = _bank("my order | the package | my parcel | the item | my purchase | my stuff")
DATES = _bank("""yesterday | last Tuesday | on March 3 | two weeks ago | on the 5th | last month |
    on 03/14 | over the weekend | on Friday | ten days ago | on June 21""")

# --- Drift-scenario banks -------------------------------------------------------------------

# long_messages: intent-free rambling that surrounds the request.
RAMBLE = _bank("""I've been meaning to write for a while now, but work has been absolutely crazy and
    the kids have had one cold after another. | My sister recommended your shop to me last year and
    since then I've bought quite a few things, mostly gifts for family. | Normally I wouldn't bother
    anyone with this, I'm the type of person who tries to figure things out alone first. | I spent
    most of last evening going through the website and the help pages, which honestly were not very
    clear to me. | To give you some background, we moved house in the spring and everything has been
    a bit chaotic since then. | I'm not very good with computers, so please bear with me if I
    explain this badly. | My husband thinks I should just let it go, but I feel it's worth asking
    properly. | I also tried calling your hotline twice, but both times I was on hold for over half
    an hour and eventually had to hang up to pick up my daughter from school. | I want to say that
    your staff have always been friendly when I've dealt with them in the past, so this isn't a
    complaint about anyone in particular. | It's been a long week and this is honestly the last
    thing I needed. | I'm writing this on my lunch break, so sorry if it's a bit all over the place.
    | A colleague of mine had a similar experience a few months ago and said you were very helpful,
    which is why I'm reaching out. | We're planning a trip next month, so I'd really like to get
    this sorted before then. | I looked through my emails and my bank app to make sure I had all the
    details right before writing. | I don't usually write long messages like this, but I think the
    context matters here. | The weather has been awful here, so I've been stuck at home with plenty
    of time to deal with admin like this. | I'm on a fixed income, so every purchase matters to me
    and I plan them carefully. | My neighbor, who also shops with you, suggested I write in rather
    than post about it online. | I have kept all the receipts and confirmation emails in a folder,
    so I can send anything you need. | Anyway, I hope you are having a better day than I am. |
    Please excuse any typos, I'm typing on my phone while waiting at the doctor's office. | I have
    recommended your store to several friends over the years, and I'd like to keep doing that. |
    Just so you know, I'm usually available in the evenings after six if anyone needs to talk to me.
    | I realise you probably get hundreds of these messages every day. | Last year I had a
    completely smooth experience with you, which is why this surprised me. | I'll try to keep it
    short, although I have a habit of over-explaining. | It's not the end of the world, but it has
    been stressful on top of everything else. | My mum always says to put things in writing, so here
    I am. | We've also had builders in the house all week, so things have been noisy and hectic. | I
    checked with the rest of my household to make sure nobody else had already contacted you about
    this. | I know these things happen and I'm not trying to make a fuss, I just want it resolved. |
    I'd appreciate a reply by email rather than a phone call, since I work night shifts. | My
    English is not perfect, so I hope this makes sense. | I did search your community forum first
    and found a few similar posts, but none with an answer.""")

# new_product_line: an energy product line whose vocabulary never occurs in normal tickets.
NEW_LINE_VOCAB = frozenset(
    _bank("""inverter | inverters | kwh | firmware | solarpanel | homebattery | smartinverter | mppt
        | photovoltaic""")
)
NEW_PRODUCTS = _bank("""SolarPanel S400 | SolarPanel S200 kit | HomeBattery HB10 | HomeBattery HB5 |
    SmartInverter I3000""")
NEW_LINE_CONTEXT = _bank("""It's part of my rooftop photovoltaic setup. | I have the HomeBattery
    HB10 paired with the SmartInverter. | The unit is rated at 10 kWh. | The inverter firmware is
    version 2.4.1. | My system is grid-tied with an MPPT charge controller. | I bought it with the
    new SolarPanel bundle. | The installer set up the inverter and the monitoring gateway last week.
    | We have two SolarPanel S400 modules on the garage roof. | The app shows the daily yield in
    kWh.""")
NEW_LINE_CORES: dict[str, tuple[str, ...]] = {
    "product_question": _bank("""how many kWh can the {product} store | does the {product} keep
        running during a power cut | is the {product} compatible with my existing inverter | can I
        update the firmware myself"""),
    "warranty_claim": _bank("""the inverter stopped working after the last firmware update | the
        {product} only holds half its kWh capacity after three months | the {product} shows error
        E-17 and won't restart"""),
    "damaged_item": _bank("""the panel glass arrived cracked | the inverter housing was smashed in
        the box | the {product} arrived with a dented casing and a bent connector"""),
    "wrong_item": _bank("""you sent the HomeBattery HB5 but I ordered the HB10 | I got a SolarPanel
        S200 instead of the S400 | the box had a different inverter model than the one I paid
        for"""),
    "track_order": _bank("""when will the {product} ship | my SolarPanel kit has been in transit for
        two weeks | the installer is booked, where is the {product}"""),
}

# Out-of-scope: nothing a support agent could act on.
OUT_OF_SCOPE_TEXTS = _bank("""what's the weather going to be like tomorrow | will it rain this
    weekend in {city} | tell me a joke | know any good puns | how do I make banana bread | what's a
    good substitute for eggs in baking | are you hiring? I'd like to apply for a warehouse job | I
    sent my CV for the marketing role last week, did anyone read it | who won the game last night |
    what's the capital of Australia | can you recommend a good movie for tonight | how many calories
    are in an avocado | what time is it in Tokyo right now | I need help with my math homework | is
    Pluto a planet | how do you say thank you in Japanese | what's your favorite color | are you a
    real person or a bot | how do I fix the check engine light on my car | can you book me a table
    for two tonight | write me a poem about cats | what's the best way to learn guitar | my dog
    keeps barking at night, any tips | how long should I boil an egg | what's the meaning of life |
    is it better to rent or buy a house | can you help me write a cover letter | I'm bored, talk to
    me | how tall is the Eiffel Tower | what are good names for a goldfish | do you think AI will
    take over the world | which is the best pizza topping | how do I get rid of hiccups | recommend
    a podcast about history | what's 15 percent of 80 | test | hello? | just testing this form | can
    you sing me a song | how do I plant tomatoes on a balcony""")

# pii_surge and the ~5% of normal tickets with personal data.
PII_SENTENCES = _bank("""You can reach me at {email}. | My phone number is {phone}. | Call me on
    {phone} if that's easier. | The card I used is {card}. | My email is {email} | card number
    {card} | contact: {email} / {phone} | Please reply to {email}, not the address on file. | Text
    me at {phone}. | For verification, my card is {card} and my phone is {phone}.""")
EMAIL_DOMAINS = _bank("example.com | mailbox.org | inbox.net | postmail.io | webmail.co")

# style_shift: angry texting and stiff legalese.
TEXTING_ABBREVIATIONS: dict[str, str] = {
    "please": "pls",
    "you": "u",
    "your": "ur",
    "you're": "ur",
    "are": "r",
    "thanks": "thx",
    "because": "bc",
    "with": "w",
    "message": "msg",
    "really": "rly",
    "don't": "dont",
    "i'm": "im",
    "can't": "cant",
    "okay": "ok",
    "tomorrow": "tmrw",
    "people": "ppl",
    "what": "wat",
    "why": "y",
    "before": "b4",
    "to": "2",
    "for": "4",
    "see": "c",
}
TEXTING_OPENERS = _bank("OMG | SERIOUSLY | UGH | HELLO?? | WTF | URGENT | COME ON | NOT AGAIN")
TEXTING_CLOSERS = _bank(
    "FIX IT ASAP | ASAP | ANSWER ME | THIS IS RIDICULOUS | SO DONE W THIS | WTH"
)
EMOJIS = ("😡", "🤬", "😤", "🙄", "😠", "💀", "‼️")
LEGALESE_OPENERS = _bank("""To whom it may concern: I hereby give formal notice regarding the matter
    described herein. | Pursuant to your published terms of sale, I write to set out the following
    matter. | Re: formal notification. The undersigned, being the account holder, states as
    follows.""")
LEGALESE_CLOSERS = _bank("""I request that this matter be remedied forthwith, failing which I
    reserve all my rights. | Kindly confirm in writing within fourteen (14) days the steps you
    intend to take. | Nothing in this correspondence shall be construed as a waiver of any right or
    remedy.""")
