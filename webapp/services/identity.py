"""Who is using the app, and the folder name the app gives them.

The pages turn Streamlit's session (``st.user`` after a Hugging Face sign-in, a visitor key in the
address, or nothing in local mode) into a ``User``; every service that touches runs or uploads takes
one. Folder names are chosen here (a hash of the identity), never taken from what a user typed.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Optional

from finetune.errors import UserError

LOCAL_KEY = "local"
# u-: signed in; v-: an anonymous visitor (whose runs share the app-wide anonymous limits).
KEY = re.compile(r"^(local|[uv]-[0-9a-f]{16})$")
VISITOR_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,64}$")


@dataclass(frozen=True)
class User:
    """A user of the app: a display name, the app-chosen folder key, operator rights, a Hub token if any."""

    name: str
    key: str
    kind: str  # "local", "huggingface" (signed in) or "visitor" (anonymous, keyed by the address)
    is_operator: bool = False
    hub_token: Optional[str] = field(default=None, repr=False, compare=False)


def local_user() -> User:
    """Local single-user mode: one user who owns everything (the app as it runs on a workstation)."""
    return User("local", LOCAL_KEY, "local", is_operator=True)


def signed_in_user(
    username: str, operators: tuple[str, ...], hub_token: Optional[str] = None, subject: Optional[str] = None
) -> User:
    """A user signed in with Hugging Face: ``preferred_username`` and the OIDC ``sub`` from the login.

    The folder is keyed by ``sub``, which never changes: a user name can be given up and taken by someone else.
    """
    if not username:
        raise UserError("sign-in: the identity provider gave no user name")
    key = _key("hf-sub:" + subject) if subject else _key("hf:" + username)
    return User(username, key, "huggingface", is_operator=username in operators, hub_token=hub_token)


def visitor_user(token: str) -> User:
    """An anonymous visitor, identified by the random key in their address (``?visitor=...``)."""
    if not VISITOR_TOKEN.fullmatch(token or ""):
        raise UserError("visitor: the key in the address is malformed; open the app without it to get a new one")
    key = _key("visitor:" + token, prefix="v-")
    return User(f"visitor {key[2:8]}", key, "visitor")


def new_visitor_token() -> str:
    return secrets.token_urlsafe(24)  # 192 bits: a key nobody can guess


def _key(identity: str, prefix: str = "u-") -> str:
    return prefix + hashlib.sha256(identity.encode()).hexdigest()[:16]


def is_visitor_key(key: str) -> bool:
    """Whether the folder key ``key`` is an anonymous visitor's."""
    return key.startswith("v-")


def check_key(key: str) -> str:
    """``key`` when it is a folder key this module makes; UserError otherwise (it may come from a page)."""
    if not KEY.fullmatch(key or ""):
        raise UserError(f"owner: {key!r} is not a user of this app")
    return key
