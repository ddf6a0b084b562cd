"""The `visible` string format of titles and names: not blank, judged by Unicode categories.

`\\S` is not enough: zero-width spaces, joiners, the BOM, bidi marks and the other format
(Cf), control (Cc) and separator (Z*) characters are not whitespace to a regex, yet a title of
only those shows as nothing in every list. A character is visible when it is a letter (L*),
digit (N*), punctuation (P*) or symbol (S*), except the few of those that render as nothing.
Combining marks (M*) count only with a base: Arabic with its marks has letters, so it passes;
a lone accent does not.
"""

from __future__ import annotations

import unicodedata

_VISIBLE_CATEGORIES = frozenset("LNPS")  # the first letter of a general category
# Letters and symbols that render as blank space: the Hangul fillers (Default_Ignorable in
# Unicode) and the empty Braille pattern, favourites for titles that look empty.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def visible(text: str) -> bool:
    """Whether `text` has at least one character a reader can see."""
    return any(unicodedata.category(c)[0] in _VISIBLE_CATEGORIES and c not in _BLANK_GLYPHS for c in text)
