"""Anonymous visitors' address keys, and replacing one that has been seen by others.

A visitor's workspace is found from the random key in the page's address (identity.visitor_user). The key stays in
the address because a Space runs inside an iframe on huggingface.co, where browsers block the Space's own cookies:
a cookie key would lose the visitor's runs at the next visit. Whoever has the address controls the runs, so a
visitor can swap the key for a new one that opens the same workspace, after which the old address opens nothing.
The swaps are recorded in LORA_LAB_HOME/visitors/ by a hash of each key (the keys themselves are never stored).
"""

import hashlib
from pathlib import Path

from finetune.errors import UserError
from finetune.rundir import read_json, write_json_atomic
from webapp.services import identity, workspace

FOLDER = "visitors"


def _record(token: str) -> Path:
    return workspace.home() / FOLDER / f"{hashlib.sha256(token.encode()).hexdigest()[:32]}.json"


def visitor_for(token: str) -> identity.User:
    """The visitor whose address holds ``token``: the workspace it was given, or the one its key derives."""
    user = identity.visitor_user(token)  # checks the token's shape
    record = read_json(_record(token)) or {}
    if record.get("replaced"):
        raise UserError(
            "visitor: this address was replaced by a newer one and no longer opens any runs; use the newer "
            "address, or open the app without ?visitor= for a new workspace"
        )
    key = record.get("key")
    if key is not None:
        identity.check_key(key)
        return identity.User(f"visitor {key[2:8]}", key, "visitor")
    return user


def replace_key(user: identity.User, token: str) -> str:
    """A new address key for ``user``'s workspace (currently opened with ``token``); the old one stops working."""
    if user.kind != "visitor" or visitor_for(token).key != user.key:
        raise UserError("visitor: only the visitor whose address this is can replace its key")
    new = identity.new_visitor_token()
    _record(new).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(_record(new), {"key": user.key})
    write_json_atomic(_record(token), {"replaced": True})
    return new
