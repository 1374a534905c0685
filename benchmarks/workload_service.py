"""An order-processing adapter in Interlok's shape: the workload of ``benchmarks/workload.py``.

consumer -> workflow -> services -> producer, for orders that arrive as JSON:

* ``QueueConsumer`` turns each payload into an :class:`AdapterMessage`;
* ``OrderWorkflow.on_message`` runs the services in order and hands the result
  to the producer, or a rejected message to the error handler;
* the services parse the JSON (``JsonParseService``), check every field with
  regular expressions (``ValidationService``), tidy names, phones and postcodes
  (``NormalisationService``), price the order (``PricingService``: line totals,
  discounts, coupon, VAT, shipping, in integer cents), choose a destination by
  rules (``RoutingService``) and render an XML invoice from small templates
  (``RenderService``);
* ``EnvelopeProducer`` serializes an envelope as JSON and "sends" it: it keeps a
  running CRC of everything it sent, the counts per destination and the last
  envelope, so two runs over the same input can be compared.

Nothing here knows about twinweave. The input is made by :func:`generate_orders`
from a seed (so every run sees the same orders, about 1 in 25 of them invalid).
Run by itself it processes generated orders and prints what it sent::

    python benchmarks/workload_service.py --messages 2000

and under the agent, with the pointcut file that matches a few functions::

    python -m agent.bootstrap --pointcuts benchmarks/workload_few.xml \\
        --report stats.json benchmarks/workload_service.py
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable

# -- the message --------------------------------------------------------------------------


class AdapterMessage:
    """A message as the adapter's components see it: an id, a payload and metadata."""

    def __init__(self, unique_id: str, payload: str) -> None:
        self.unique_id = unique_id
        self.payload = payload
        self.metadata: dict[str, str] = {}
        self.order: dict[str, Any] = {}
        self.document = ""

    def add_metadata(self, key: str, value: str) -> None:
        self.metadata[key] = value


class ServiceError(Exception):
    """A service refused the message; ``problems`` says why."""

    def __init__(self, service: str, problems: list[str]) -> None:
        super().__init__(f"{service}: {'; '.join(problems)}")
        self.service = service
        self.problems = problems


# -- reference data -----------------------------------------------------------------------

DOMESTIC = "GB"
EU = ("IE", "FR", "DE", "NL")
DIALLING_CODES = {"GB": "44", "IE": "353", "FR": "33", "DE": "49", "NL": "31", "US": "1"}
POSTCODES = {
    "GB": re.compile(r"^[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}$"),
    "IE": re.compile(r"^[A-Z]\d[\dW] ?[A-Z\d]{4}$"),
    "FR": re.compile(r"^\d{5}$"),
    "DE": re.compile(r"^\d{5}$"),
    "NL": re.compile(r"^\d{4} ?[A-Z]{2}$"),
    "US": re.compile(r"^\d{5}(?:-\d{4})?$"),
}
VAT_RATES = {  # percent, by country and product category (0 where zero-rated)
    "GB": {"books": 0, "food": 0, "default": 20},
    "IE": {"books": 0, "food": 0, "default": 23},
    "FR": {"books": 5, "food": 5, "default": 20},
    "DE": {"books": 7, "food": 7, "default": 19},
    "NL": {"books": 9, "food": 9, "default": 21},
    "US": {"default": 0},
}
TO_GBP = {"GBP": 100, "EUR": 86, "USD": 79}  # pence per unit of the currency
TIER_DISCOUNTS = {"gold": 5, "silver": 2}  # percent off the subtotal
SHIPPING = {  # zone: (base in cents, per started kg in cents, free from this subtotal in GBP)
    "domestic": (395, 60, 50),
    "eu": (995, 180, 150),
    "world": (1995, 350, 300),
}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- the consumer -------------------------------------------------------------------------


class QueueConsumer:
    """Receives payloads from a queue and hands each one on as a message with a fresh id."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = 0

    def next_id(self) -> str:
        self.received += 1
        return f"{self.name}-{self.received:08d}"

    def poll(self, payloads: list[str]) -> Iterator[AdapterMessage]:
        for payload in payloads:
            yield AdapterMessage(self.next_id(), payload)


# -- the services -------------------------------------------------------------------------


class JsonParseService:
    """Parses the payload into ``message.order``."""

    def do_service(self, message: AdapterMessage) -> None:
        try:
            order = json.loads(message.payload)
        except ValueError as exc:
            raise ServiceError("json-parse", [f"not JSON: {exc}"]) from None
        if not isinstance(order, dict):
            raise ServiceError("json-parse", ["the payload is not a JSON object"])
        message.order = order
        message.add_metadata("order-id", str(order.get("order_id", "")))


def field(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of nested dicts, or ``None``."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


class ValidationService:
    """Checks the order's fields against patterns; collects every problem before failing."""

    ORDER_FIELDS = {
        "order_id": re.compile(r"^ORD-\d{8}-\d{6}$"),
        "created": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"),
        "currency": re.compile(r"^(?:GBP|EUR|USD)$"),
        "channel": re.compile(r"^(?:web|store|partner)$"),
        "customer.id": re.compile(r"^C-\d{6}$"),
        "customer.email": re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"),
        "customer.phone": re.compile(r"^\+?[\d ()-]{7,20}$"),
        "shipping.country": re.compile(r"^[A-Z]{2}$"),
    }
    SKU = re.compile(r"^(?:[A-Z]{2})-\d{4}(?:-[A-Z])?$")
    PRICE = re.compile(r"^\d{1,5}\.\d{2}$")
    COUPON = re.compile(r"^(?:[A-Z]{4,8}\d{0,2})$")

    def do_service(self, message: AdapterMessage) -> None:
        order = message.order
        problems: list[str] = []
        for path, pattern in self.ORDER_FIELDS.items():
            self.check(order, path, pattern, problems)
        self.check_address(order.get("shipping") or {}, problems)
        lines = order.get("lines")
        if not isinstance(lines, list) or not lines:
            problems.append("lines: at least one line is required")
        else:
            for number, line in enumerate(lines, 1):
                self.check_line(number, line, problems)
        coupon = order.get("coupon")
        if coupon is not None and not self.COUPON.match(str(coupon)):
            problems.append(f"coupon: {coupon!r} is not a coupon code")
        if problems:
            raise ServiceError("validate", problems)

    @staticmethod
    def check(record: dict[str, Any], path: str, pattern: re.Pattern[str], problems: list[str]):
        value = field(record, path)
        if value is None:
            problems.append(f"{path}: missing")
        elif not pattern.match(str(value).strip()):
            problems.append(f"{path}: {value!r} does not match {pattern.pattern}")

    def check_address(self, address: dict[str, Any], problems: list[str]) -> None:
        for name in ("street", "city", "postcode"):
            if not str(address.get(name) or "").strip():
                problems.append(f"shipping.{name}: missing")
        pattern = POSTCODES.get(address.get("country", ""))
        if pattern is None:
            problems.append(f"shipping.country: we do not ship to {address.get('country')!r}")
        elif not pattern.match(str(address.get("postcode", "")).upper().strip()):
            problems.append(f"shipping.postcode: {address.get('postcode')!r} is not valid")

    def check_line(self, number: int, line: dict[str, Any], problems: list[str]) -> None:
        where = f"lines[{number}]"
        if not self.SKU.match(str(line.get("sku", ""))):
            problems.append(f"{where}.sku: {line.get('sku')!r} is not a SKU")
        if not self.PRICE.match(str(line.get("unit_price", ""))):
            problems.append(f"{where}.unit_price: {line.get('unit_price')!r} is not a price")
        quantity = line.get("quantity")
        if not isinstance(quantity, int) or not 0 < quantity <= 999:
            problems.append(f"{where}.quantity: {quantity!r} is not between 1 and 999")


WHITESPACE = re.compile(r"\s+")
NOT_DIGIT = re.compile(r"\D")


def collapse_spaces(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def capitalise_word(word: str) -> str:
    """``o'brien`` -> ``O'Brien``, ``smith-jones`` -> ``Smith-Jones``, ``mcdonald`` -> ``McDonald``.

    Hyphenated parts are capitalised one by one.
    """
    parts = []
    for part in word.split("-"):
        part = part.capitalize()
        if part.startswith("O'") and len(part) > 2:
            part = "O'" + part[2:].capitalize()
        elif part.startswith("Mc") and len(part) > 2:
            part = "Mc" + part[2:].capitalize()
        parts.append(part)
    return "-".join(parts)


def normalise_name(name: str) -> str:
    return " ".join(capitalise_word(word) for word in collapse_spaces(name).split(" "))


def normalise_phone(phone: str, country: str) -> str:
    """International form: ``020 7946 0018`` in GB -> ``+442079460018``."""
    if phone.startswith("+"):
        return "+" + NOT_DIGIT.sub("", phone)
    return "+" + DIALLING_CODES.get(country, "") + NOT_DIGIT.sub("", phone).lstrip("0")


def normalise_postcode(postcode: str, country: str) -> str:
    code = collapse_spaces(postcode).upper().replace(" ", "")
    if country == "GB" and len(code) > 3:
        return code[:-3] + " " + code[-3:]
    if country == "NL" and len(code) == 6:
        return code[:4] + " " + code[4:]
    return code


class NormalisationService:
    """Tidies what people typed: names, e-mail, phone numbers, postcodes, descriptions."""

    def do_service(self, message: AdapterMessage) -> None:
        order = message.order
        customer = order["customer"]
        address = order["shipping"]
        country = address["country"]
        customer["name"] = normalise_name(customer["name"])
        customer["email"] = customer["email"].strip().lower()
        customer["phone"] = normalise_phone(customer["phone"], country)
        address["street"] = collapse_spaces(address["street"])
        address["city"] = normalise_name(address["city"])
        address["postcode"] = normalise_postcode(address["postcode"], country)
        for line in order["lines"]:
            line["description"] = collapse_spaces(line["description"])


def parse_amount(text: str) -> int:
    """``"12.50"`` -> 1250 (cents); the text has been validated."""
    units, _, cents = text.partition(".")
    return int(units) * 100 + int(cents)


def percent_of(amount: int, percent: int) -> int:
    """``percent`` % of ``amount`` cents, rounded half up."""
    return (amount * percent + 50) // 100


def volume_discount(quantity: int) -> int:
    if quantity >= 10:
        return 10
    if quantity >= 5:
        return 5
    return 0


def vat_rate(country: str, category: str) -> int:
    rates = VAT_RATES[country]
    return rates.get(category, rates["default"])


def shipping_zone(country: str) -> str:
    if country == DOMESTIC:
        return "domestic"
    return "eu" if country in EU else "world"


def to_gbp(amount: int, currency: str) -> int:
    return amount * TO_GBP[currency] // 100


class PricingService:
    """Prices the order in integer cents: lines, discounts, coupon, VAT and shipping."""

    COUPON = re.compile(r"^(?P<name>[A-Z]+)(?P<percent>\d{2})?$")

    def do_service(self, message: AdapterMessage) -> None:
        order = message.order
        country = order["shipping"]["country"]
        currency = order["currency"]
        priced = [self.price_line(line, country) for line in order["lines"]]
        subtotal = sum(line["net"] for line in priced)
        tier = order["customer"].get("tier", "new")
        discount = percent_of(subtotal, TIER_DISCOUNTS.get(tier, 0))
        coupon_percent, free_shipping = self.coupon(order.get("coupon"))
        discount += percent_of(subtotal - discount, coupon_percent)
        tax = sum(percent_of(line["net"], line["vat"]) for line in priced)
        tax -= percent_of(tax, 100 * discount // subtotal if subtotal else 0)
        weight = sum(line["weight_g"] * line["quantity"] for line in order["lines"])
        shipping = 0 if free_shipping else self.shipping(weight, country, subtotal, currency)
        total = subtotal - discount + tax + shipping
        order["totals"] = {
            "subtotal": subtotal,
            "discount": discount,
            "tax": tax,
            "shipping": shipping,
            "total": total,
            "total_gbp": to_gbp(total, currency),
            "weight_g": weight,
        }
        order["priced_lines"] = priced
        message.add_metadata("order-total", str(total))

    def price_line(self, line: dict[str, Any], country: str) -> dict[str, Any]:
        unit = parse_amount(line["unit_price"])
        quantity = line["quantity"]
        gross = unit * quantity
        net = gross - percent_of(gross, volume_discount(quantity))
        return {
            "sku": line["sku"],
            "description": line["description"],
            "quantity": quantity,
            "unit": unit,
            "net": net,
            "vat": vat_rate(country, line.get("category", "default")),
        }

    def coupon(self, code: str | None) -> tuple[int, bool]:
        """(percent off, free shipping) for a coupon code; unknown codes give nothing."""
        if not code:
            return 0, False
        if code == "FREESHIP":
            return 0, True
        found = self.COUPON.match(code)
        if found is None or found.group("percent") is None:
            return 0, False
        if found.group("name") not in ("WINTER", "SPRING", "WELCOME"):
            return 0, False
        return min(int(found.group("percent")), 25), False

    def shipping(self, weight_g: int, country: str, subtotal: int, currency: str) -> int:
        base, per_kg, free_from = SHIPPING[shipping_zone(country)]
        if to_gbp(subtotal, currency) >= free_from * 100:
            return 0
        return base + per_kg * -(-weight_g // 1000)


def is_fraud_suspect(order: dict[str, Any]) -> bool:
    return order["customer"].get("tier") == "new" and order["totals"]["total_gbp"] > 40_000


def has_hazardous_goods(order: dict[str, Any]) -> bool:
    return any(line.get("category") == "hazmat" for line in order["lines"])


def is_international(order: dict[str, Any]) -> bool:
    return order["shipping"]["country"] != DOMESTIC


def is_partner_order(order: dict[str, Any]) -> bool:
    return order["channel"] == "partner"


def is_express(order: dict[str, Any]) -> bool:
    return bool(order.get("express"))


class RoutingService:
    """Chooses the destination: the first rule whose predicate holds wins."""

    RULES: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("orders.review", is_fraud_suspect),
        ("orders.hazmat", has_hazardous_goods),
        ("orders.partner", is_partner_order),
        ("orders.international", is_international),
        ("orders.express", is_express),
    ]

    def do_service(self, message: AdapterMessage) -> None:
        order = message.order
        destination = self.route(order)
        message.add_metadata("destination", destination)
        message.add_metadata("priority", str(self.priority(order)))

    def route(self, order: dict[str, Any]) -> str:
        for destination, applies in self.RULES:
            if applies(order):
                return destination
        return "orders.standard"

    def priority(self, order: dict[str, Any]) -> int:
        priority = 5
        if is_express(order):
            priority -= 2
        if order["customer"].get("tier") == "gold":
            priority -= 1
        if order["totals"]["total_gbp"] > 25_000:
            priority -= 1
        return max(priority, 1)


# -- rendering ----------------------------------------------------------------------------


def escape_xml(text: Any) -> str:
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def format_money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{units:,}.{rest:02d}"


def format_date(iso: str) -> str:
    """``2026-11-25T14:03:27Z`` -> ``25 Nov 2026 14:03``."""
    day, _, clock = iso.partition("T")
    year, month, date = day.split("-")
    return f"{int(date)} {MONTHS[int(month) - 1]} {year} {clock[:5]}"


FILTERS: dict[str, Callable[[Any], str]] = {
    "escape": escape_xml,
    "money": format_money,
    "date": format_date,
    "upper": lambda value: str(value).upper(),
}


class Template:
    """A tiny template language: ``{{ dotted.path }}`` and ``{{ dotted.path|filter }}``.

    Compiled once into literal text and lookups; rendering is a join.
    """

    TAG = re.compile(r"\{\{\s*([A-Za-z_][\w.]*)\s*(?:\|\s*(\w+)\s*)?\}\}")

    def __init__(self, text: str) -> None:
        self.parts: list[tuple[str, str | None, str | None]] = []
        position = 0
        for tag in self.TAG.finditer(text):
            self.parts.append((text[position : tag.start()], tag.group(1), tag.group(2)))
            position = tag.end()
        self.parts.append((text[position:], None, None))

    def render(self, context: dict[str, Any]) -> str:
        out = []
        for literal, path, filter_name in self.parts:
            out.append(literal)
            if path is not None:
                out.append(self.value(context, path, filter_name))
        return "".join(out)

    @staticmethod
    def value(context: dict[str, Any], path: str, filter_name: str | None) -> str:
        value = field(context, path)
        if value is None:
            return ""
        if filter_name is None:
            return str(value)
        return FILTERS[filter_name](value)


INVOICE = Template(
    """<invoice id="{{ order.order_id|escape }}" message="{{ message_id }}" \
date="{{ order.created|date }}" currency="{{ order.currency }}">
  <customer id="{{ order.customer.id }}" tier="{{ order.customer.tier|upper }}">
    <name>{{ order.customer.name|escape }}</name>
    <email>{{ order.customer.email|escape }}</email>
    <phone>{{ order.customer.phone }}</phone>
  </customer>
  <ship-to country="{{ order.shipping.country }}">
    <street>{{ order.shipping.street|escape }}</street>
    <city>{{ order.shipping.city|escape }}</city>
    <postcode>{{ order.shipping.postcode|escape }}</postcode>
  </ship-to>
  <lines>
{{ lines }}
  </lines>
  <totals subtotal="{{ totals.subtotal|money }}" discount="{{ totals.discount|money }}" \
tax="{{ totals.tax|money }}" shipping="{{ totals.shipping|money }}" \
total="{{ totals.total|money }}"/>
  <notes>{{ order.notes|escape }}</notes>
</invoice>"""
)
INVOICE_LINE = Template(
    '    <line n="{{ n }}" sku="{{ line.sku|escape }}" qty="{{ line.quantity }}" '
    'unit="{{ line.unit|money }}" net="{{ line.net|money }}" vat="{{ line.vat }}%">'
    "{{ line.description|escape }}</line>"
)


class RenderService:
    """Renders the priced order as an XML invoice (``message.document``)."""

    def do_service(self, message: AdapterMessage) -> None:
        order = message.order
        lines = "\n".join(self.render_line(n, line) for n, line in enumerate(order["priced_lines"]))
        message.document = INVOICE.render(
            {
                "order": order,
                "totals": order["totals"],
                "lines": lines,
                "message_id": message.unique_id,
            }
        )

    def render_line(self, n: int, line: dict[str, Any]) -> str:
        return INVOICE_LINE.render({"n": n + 1, "line": line})


# -- the producer, the error handler and the workflow -------------------------------------


class EnvelopeProducer:
    """Sends each message as a JSON envelope; keeps a CRC of all it sent and counts."""

    def __init__(self) -> None:
        self.sent = 0
        self.digest = 0
        self.by_destination: dict[str, int] = {}
        self.last = b""

    def produce(self, message: AdapterMessage, destination: str | None = None) -> None:
        destination = destination or message.metadata["destination"]
        envelope = {
            "message_id": message.unique_id,
            "destination": destination,
            "metadata": message.metadata,
            "document": message.document,
            "checksum": f"{zlib.crc32(message.document.encode()):08x}",
        }
        data = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
        self.send(destination, data)

    def send(self, destination: str, data: bytes) -> None:
        self.sent += 1
        self.by_destination[destination] = self.by_destination.get(destination, 0) + 1
        self.digest = zlib.crc32(data, self.digest)
        self.last = data


class ErrorHandler:
    """Sends rejected messages to the error queue with the reasons (Interlok's error handler)."""

    def __init__(self, producer: EnvelopeProducer) -> None:
        self.producer = producer
        self.rejected = 0

    def handle(self, message: AdapterMessage, error: ServiceError) -> None:
        self.rejected += 1
        message.add_metadata("failed-service", error.service)
        message.document = json.dumps({"problems": error.problems, "payload": message.payload})
        self.producer.produce(message, "orders.rejected")


class OrderWorkflow:
    """Interlok's standard workflow: services in order, then the producer."""

    def __init__(
        self, services: list[Any], producer: EnvelopeProducer, error_handler: ErrorHandler
    ) -> None:
        self.services = services
        self.producer = producer
        self.error_handler = error_handler

    def on_message(self, message: AdapterMessage) -> None:
        try:
            for service in self.services:
                service.do_service(message)
        except ServiceError as error:
            self.error_handler.handle(message, error)
            return
        self.producer.produce(message)


class Adapter:
    """One channel: a consumer feeding one workflow."""

    def __init__(self) -> None:
        self.consumer = QueueConsumer("orders-in")
        self.producer = EnvelopeProducer()
        self.workflow = OrderWorkflow(
            [
                JsonParseService(),
                ValidationService(),
                NormalisationService(),
                PricingService(),
                RoutingService(),
                RenderService(),
            ],
            self.producer,
            ErrorHandler(self.producer),
        )

    def process(self, payloads: list[str]) -> int:
        """Run every payload through the workflow; the number of messages handled."""
        handled = 0
        for message in self.consumer.poll(payloads):
            self.workflow.on_message(message)
            handled += 1
        return handled


# -- the input (made once, before anything is timed) ------------------------------------------

FIRST = ("ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken", "sophie")
LAST = ("lovelace", "hopper", "turing", "o'brien", "mcdonald", "smith-jones", "van rossum")
STREETS = ("baker st", "high street", "rue de rivoli", "kurfuerstendamm", "main street")
CITIES = {"GB": "london", "IE": "dublin", "FR": "paris", "DE": "berlin", "NL": "utrecht"}
CITIES["US"] = "new york"
PRODUCTS = (
    ("BK", "books", "Paperback,  {n} pages", 150, 899),
    ("FD", "food", "Coffee beans   {n} g", 250, 1250),
    ("ST", "stationery", "Notebook, ruled  ({n} sheets)", 320, 499),
    ("EL", "electronics", "USB cable {n} cm", 80, 1999),
    ("HZ", "hazmat", "Lithium battery pack {n} mAh", 400, 3450),
)


def _postcode(rng: random.Random, country: str) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(5))
    letters = "".join(rng.choice("ABDEFGHJLNPQRSTUWXYZ") for _ in range(2))
    if country == "GB":
        return f"{rng.choice(('nw', 'sw', 'e', 'ec'))}{digits[0]} {digits[1]}{letters.lower()}"
    if country == "IE":
        return f"D0{digits[0]} {letters}{digits[1:3]}"
    if country == "NL":
        return f"{digits[:4]}{letters.lower()}"
    return digits


def generate_orders(count: int, seed: int = 2026) -> list[str]:
    """``count`` order payloads (JSON text), the same for the same seed; ~4 % are invalid."""
    rng = random.Random(seed)
    payloads = []
    for number in range(count):
        country = rng.choice(("GB", "GB", "GB", "GB", "IE", "FR", "DE", "NL", "US"))
        currency = {"GB": "GBP", "US": "USD"}.get(country, "EUR")
        lines = []
        for _ in range(rng.randint(1, 6)):
            prefix, category, description, weight, price = rng.choice(PRODUCTS)
            if prefix == "HZ" and rng.random() < 0.8:
                prefix, category, description, weight, price = PRODUCTS[0]
            suffix = rng.choice(("", "", "-R", "-B"))
            lines.append(
                {
                    "sku": f"{prefix}-{rng.randint(1000, 9999)}{suffix}",
                    "description": description.format(n=rng.randint(10, 500)),
                    "category": category,
                    "quantity": rng.choice((1, 1, 1, 2, 3, 5, 12)),
                    "unit_price": f"{price * rng.randint(50, 150) // 10000}."
                    f"{rng.randint(0, 99):02d}",
                    "weight_g": weight,
                }
            )
        order: dict[str, Any] = {
            "order_id": f"ORD-2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}-{number:06d}",
            "created": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            "channel": rng.choice(("web", "web", "web", "store", "partner")),
            "currency": currency,
            "customer": {
                "id": f"C-{rng.randint(0, 999999):06d}",
                "name": f"  {rng.choice(FIRST)}   {rng.choice(LAST)} ",
                "email": f"{rng.choice(FIRST).title()}.{rng.randint(1, 99)}@Example.co.uk ",
                "phone": f"0{rng.randint(20, 99)} {rng.randint(1000, 9999)} "
                f"{rng.randint(1000, 9999)}",
                "tier": rng.choice(("new", "new", "silver", "gold")),
            },
            "shipping": {
                "street": f"{rng.randint(1, 250)}  {rng.choice(STREETS)}",
                "city": CITIES[country],
                "postcode": _postcode(rng, country),
                "country": country,
            },
            "lines": lines,
            "coupon": rng.choice((None, None, None, "WINTER10", "FREESHIP", "SPRING15", "BOGUS")),
            "express": rng.random() < 0.15,
            "notes": rng.choice(("", "Leave with the neighbour <No. 12>", "Gift: wrap & tag")),
        }
        if rng.random() < 0.04:
            _spoil(rng, order)
        payloads.append(json.dumps(order, indent=1))
    return payloads


def _spoil(rng: random.Random, order: dict[str, Any]) -> None:
    """Make ``order`` invalid in one of the ways real input is."""
    how = rng.randrange(4)
    if how == 0:
        order["customer"]["email"] = "nobody-at-example.com"
    elif how == 1:
        order["lines"][0]["sku"] = order["lines"][0]["sku"].lower()
    elif how == 2:
        order["lines"][-1]["quantity"] = 0
    else:
        order["shipping"]["postcode"] = "?"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="how many orders to process")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the generated orders")
    options = parser.parse_args(argv)
    payloads = generate_orders(options.messages, options.seed)
    adapter = Adapter()
    started = time.perf_counter()
    handled = adapter.process(payloads)
    elapsed = time.perf_counter() - started
    producer = adapter.producer
    print(
        f"processed {handled} messages in {elapsed * 1e3:.1f} ms "
        f"({elapsed / max(handled, 1) * 1e6:.1f} us per message); sent {producer.sent}, "
        f"digest {producer.digest:08x}"
    )
    for destination, count in sorted(producer.by_destination.items()):
        print(f"  {destination:<22} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
