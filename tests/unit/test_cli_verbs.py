"""Each ``edge`` verb is the API call of the same name (issue 14: "CLI verbs equal API verbs",
sqlite-utils style). The table below is the contract: adding, renaming or removing a verb, or
the function behind it, fails here until the table says so on purpose.
"""

from __future__ import annotations

import argparse

import pytest

import edge
from edge import capsule_set, opened, server, store
from edge.cli import build_parser

#: verb -> (object, attribute) of the API call it makes. A verb differs from its call's name only
#: where the line says why.
VERB_TO_API = {
    "verify": (edge, "verify_capsule"),  # a module function: "verify" alone would say nothing of what
    "info": (opened.Capsule, "info"),
    "search": (opened.Capsule, "search"),  # and CapsuleSet.search for several capsules
    "documents": (opened.Capsule, "documents"),
    "read": (opened.Capsule, "read"),
    "export": (opened.Capsule, "export"),
    "install": (store.Store, "install"),
    "sync": (store.Store, "sync"),
    "serve": (server, "serve"),
    "list": (store.Store, "list"),
    "history": (store.Store, "history"),
    "settings": (store.Store, "settings"),  # a property; with --keep-versions / --quota: Store.configure
    "remove": (store.Store, "remove"),
    "trust": (store.Store, "install_trust"),  # `edge trust install`; `trust show` reads Store.state
}


def _verbs() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return set(actions[0].choices)


def test_every_verb_is_in_the_table_and_nothing_else():
    assert _verbs() == set(VERB_TO_API)


@pytest.mark.parametrize("verb", sorted(VERB_TO_API))
def test_each_verb_names_a_callable_api(verb):
    owner, name = VERB_TO_API[verb]
    api = getattr(owner, name)
    assert callable(api) or isinstance(api, property), f"edge {verb} -> {owner.__name__}.{name}"


def test_search_over_several_capsules_and_settings_changes_have_their_calls():
    assert callable(capsule_set.CapsuleSet.search)
    assert callable(store.Store.configure)
