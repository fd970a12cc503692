"""Allow ``python -m jarvis_memory_server``."""

from jarvis_memory_server.cli import main

main()
