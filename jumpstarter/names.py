"""Names and labels of controller records, as upstream (Kubernetes) accepts them.

Client, exporter and namespace names are DNS-1123 labels; labels follow Kubernetes'
label key/value rules; `jumpstarter.dev` keys are reserved for the controller. Used by
controllerd (the authority) and early by `jumpstarter admin`, so both say the same.
"""

from __future__ import annotations

import re

from jumpstarter.selector import KEY_RE, VALUE_RE

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_LABELS = 64
RESERVED_DOMAIN = "jumpstarter.dev"
NAME_LABEL = "jumpstarter.dev/name"


class InvalidName(ValueError):
    """A name or label that upstream would refuse; the message says which rule."""


def shown(text: str, limit: int = 40) -> str:
    """`text` quoted for an error message, cut short so a 100,000-character input stays readable."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


def check_name(value: object, what: str) -> str:
    """`value` if it is a DNS-1123 label (1-63 of a-z, 0-9, '-', alphanumeric at both ends)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        text = shown(value) if isinstance(value, str) else type(value).__name__
        raise InvalidName(
            f"invalid {what} {text}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def reserved(key: str) -> bool:
    """Keys under `jumpstarter.dev/` (or a subdomain of it) are the controller's."""
    prefix, slash, _ = key.rpartition("/")
    return bool(slash) and (prefix == RESERVED_DOMAIN or prefix.endswith("." + RESERVED_DOMAIN))


def check_label(key: object, value: object, what: str = "label") -> None:
    """Kubernetes label rules: key `[prefix/]name` (name 1-63 characters), value 0-63 characters."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise InvalidName(
            f"invalid {what} key {shown(str(key))}: [DNS-prefix/]name, name 1-63 letters, digits, "
            "'-', '_', '.' starting and ending with a letter or digit"
        )
    if not isinstance(value, str) or len(value) > 63 or not VALUE_RE.match(value):
        raise InvalidName(
            f"invalid {what} value {shown(str(value))} for {key}: 0-63 letters, digits, '-', '_', '.' "
            "starting and ending with a letter or digit"
        )


def check_labels(labels: object, what: str = "label") -> dict[str, str]:
    """Labels an administrator sets: valid, at most MAX_LABELS, none in the reserved domain."""
    if not isinstance(labels, dict):
        raise InvalidName(f"{what}s must be a mapping of KEY to VALUE")
    if len(labels) > MAX_LABELS:
        raise InvalidName(f"at most {MAX_LABELS} {what}s")
    for key, value in labels.items():
        check_label(key, value, what)
        if reserved(key):
            raise InvalidName(f"{what} {key} is reserved: the controller sets {RESERVED_DOMAIN}/ labels")
    return dict(labels)


HOST_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
)


def check_host(value: object) -> str:
    """`value` as a certificate name: a DNS host name (lowercased) or an IP address."""
    import ipaddress

    text = value.strip("[]").lower() if isinstance(value, str) else ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not HOST_RE.match(text):
        shown_value = shown(value) if isinstance(value, str) else type(value).__name__
        raise InvalidName(f"invalid host {shown_value}: expected a DNS host name or an IP address")
    return text
