"""Subcommands owned by training/ (registered into the `brainstacks` console script by brainstacks_cli.main)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this package's subcommands to the top-level parser."""
    __import__("training.pretrain", fromlist=["add_parser"]).add_parser(subparsers)  # brainstacks pretrain
