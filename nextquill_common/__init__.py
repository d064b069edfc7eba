"""Helpers both packages use and neither owns: atomic files and JSON Lines (``jsonl``), command
-line options derived from dataclass fields (``cli_options``). Imports nothing of ours."""
