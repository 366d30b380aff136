"""Client addresses: X-Forwarded-For is believed only from trusted proxies."""

import pytest

from canvas.clientip import client_ip, scope_ip


@pytest.fixture
def proxies(settings):
    settings.PLACE_TRUSTED_PROXIES = ["10.0.0.1", "192.168.0.0/16"]


def test_without_trusted_proxies_the_header_is_ignored(settings):
    settings.PLACE_TRUSTED_PROXIES = []
    assert client_ip(peer="203.0.113.9", forwarded_for="1.2.3.4") == "203.0.113.9"


def test_forged_header_from_an_untrusted_peer_changes_nothing(proxies):
    assert client_ip(peer="203.0.113.9", forwarded_for="10.0.0.1, 1.2.3.4") == (
        "203.0.113.9"
    )


def test_trusted_proxy_names_the_client(proxies):
    assert client_ip(peer="10.0.0.1", forwarded_for="198.51.100.7") == "198.51.100.7"


def test_chain_is_read_from_the_right_so_a_forged_prefix_is_skipped(proxies):
    # The client sent "X-Forwarded-For: 6.6.6.6"; the proxy appended the real peer.
    header = "6.6.6.6, 198.51.100.7, 192.168.3.4"
    assert client_ip(peer="10.0.0.1", forwarded_for=header) == "198.51.100.7"


def test_garbage_in_the_chain_falls_back_to_the_peer(proxies):
    assert client_ip(peer="10.0.0.1", forwarded_for="not-an-ip") == "10.0.0.1"


def test_scope_reads_peer_and_header(proxies):
    scope = {
        "client": ("10.0.0.1", 1234),
        "headers": [(b"x-forwarded-for", b"198.51.100.7")],
    }
    assert scope_ip(scope) == "198.51.100.7"
    assert scope_ip({"headers": []}) is None
