"""Fake of modules/util.py: the one helper the fake uses."""

import re


def natural_sort_key(s, regex=re.compile("([0-9]+)")):
    """"vae2" before "vae10": digit runs compare as numbers, the rest case-insensitively."""
    return [int(text) if text.isdigit() else text.lower() for text in regex.split(s)]
