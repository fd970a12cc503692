"""The README's quick start, exactly as a newcomer types it."""

from conftest import Daemon
from jarvis_memory import Client


def test_readme_quickstart(daemon: Daemon) -> None:
    with Client(daemon.addr) as jm:
        m = jm.add_memory("Prefers espresso after lunch", category="preference", source="user_explicit")
        again = jm.add_memory("  prefers ESPRESSO after lunch ", category="preference", source="user_explicit")
        assert again.id == m.id and again.deduplicated
        assert jm.get_memory(m.id).content == "Prefers espresso after lunch"
        assert not m.deduplicated
