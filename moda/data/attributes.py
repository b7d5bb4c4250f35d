"""Finding a catalog's attribute values (colour, gender, product type, category, usage) in a description.

A vocabulary is built from a catalog's own metadata (the values of its Colour, Gender, ProductType, ... columns),
widened with synonyms ("gray" -> Grey, "ladies" -> Women, "t-shirt" -> Tshirts) and singular/plural forms
("Kurta" -> Kurtas). Text is matched as whole words, left to right, longest phrase first: "Navy Blue" is Navy Blue
and not also Blue, "Sports Shoes" is a product type and not the usage Sports (the scores still count the usage a
product type holds: `usages_in`).

    vocabulary = AttributeVocabulary.from_rows(rows)                 # Myntra or small-set columns, found by name
    extract_attributes("Navy Blue Formal Trousers for Men", vocabulary)
    # {"colour": ["Navy Blue"], "gender": ["Men"], "product_type": ["Trousers"], "category": [],
    #  "subcategory": [], "usage": ["Formal"]}
"""

import math
import re
from dataclasses import dataclass, field

ATTRIBUTES = ("colour", "gender", "product_type", "category", "subcategory", "usage")

# attribute -> catalog column, for the two catalog layouts MODA knows.
MYNTRA_COLUMNS = {
    "colour": "Colour", "gender": "Gender", "product_type": "ProductType", "category": "Category",
    "subcategory": "SubCategory", "usage": "Usage",
}
SMALL_COLUMNS = {
    "colour": "baseColour", "gender": "gender", "product_type": "articleType", "category": "masterCategory",
    "subcategory": "subCategory", "usage": "usage",
}
KNOWN_COLUMNS = {"myntra": MYNTRA_COLUMNS, "small": SMALL_COLUMNS}

# Spelling variants folded before matching, in the text and in the vocabulary alike.
SPELLINGS = {"gray": "grey", "color": "colour", "colors": "colours", "colored": "coloured", "multicolor": "multicolour"}

# canonical value (lower case) -> other ways to say it. A synonym is used only when its canonical value is in the
# catalog and the synonym is not itself one of the catalog's values (a catalog with Burgundy keeps it apart).
SYNONYMS = {
    "colour": {
        "navy blue": ["navy"],
        "off white": ["offwhite", "ivory"],
        "maroon": ["burgundy", "wine"],
        "multi": ["multicolour", "multicoloured", "multi colour", "multi coloured", "multi-colour"],
        "turquoise blue": ["turquoise"],
        "sea green": ["seagreen"],
        "mushroom brown": ["mushroom"],
        "gold": ["golden"],
        "cream": ["creme"],
        "charcoal": ["charcoal grey"],
        "grey": ["grey melange"],
        "khaki": ["kaki"],
    },
    "gender": {
        "men": ["man", "male", "males", "mens", "gents", "gentlemen", "gentleman"],
        "women": ["woman", "female", "females", "womens", "ladies", "lady"],
        "boys": ["boy", "kids boys", "kids boy", "boys kids"],
        "girls": ["girl", "kids girls", "kids girl", "girls kids"],
        # moda.catalog.build_dataset's template writes Unisex as "for men and women".
        "unisex": ["unisexes", "men and women", "women and men"],
    },
    "product_type": {
        "tshirts": ["t shirt", "t shirts", "tee", "tees", "tee shirt", "tee shirts"],
        "trousers": ["pants", "pant"],
        "sweatshirts": ["sweat shirt", "sweat shirts"],
        "flip flops": ["flipflops", "flip flop", "flipflop"],
        "innerwear vests": ["vest", "vests"],
        "kurta sets": ["kurta set"],
    },
    "category": {"apparel": ["clothing"], "accessories": ["accessory"]},
    "subcategory": {"flip flops": ["flipflops", "flipflop"]},
    "usage": {
        "sports": ["sport", "sporty", "sportswear"],
        "party": ["partywear", "party wear"],
        "ethnic": ["ethnic wear", "ethnicwear"],
        "formal": ["formals", "formal wear"],
        "casual": ["casuals", "casual wear"],
    },
}
# Attributes whose values are nouns: their singular and plural forms are matched too.
COUNTABLE = ("product_type", "category", "subcategory")
# Forms that are ordinary adjectives in descriptions ("short sleeves", "flat sole"), not product names.
AMBIGUOUS_FORMS = {"short", "flat", "brief", "heel", "tight"}
MISSING_VALUES = {"", "na", "n/a", "nan", "none", "null", "-"}


def words(text: str) -> list:
    """Lower-case word tokens with possessives dropped ("Men's" -> men) and spelling variants folded."""
    text = re.sub(r"['\u2019]s\b", "", str(text).lower())
    return [SPELLINGS.get(token, token) for token in re.findall(r"[a-z0-9]+", text)]


def singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def number_forms(phrase: tuple) -> set:
    """The phrase with its last word singular and plural ("kurta sets" -> kurta set, kurta sets)."""
    *head, last = phrase
    other = singular(last) if singular(last) != last else plural(last)
    if len(phrase) == 1 and other in AMBIGUOUS_FORMS:
        return {phrase}
    return {phrase, tuple(head) + (other,)}


def split_colours(value: str) -> list:
    """A colour cell naming several colours ("Black and White", "Red/Blue") -> each colour."""
    return [part for part in re.split(r"\s*(?:/|&|,|\+|\band\b)\s*", value, flags=re.IGNORECASE) if part]


def is_missing(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in MISSING_VALUES


def columns_for(row_keys, columns=None) -> dict:
    """
    The attribute -> column mapping for a catalog: `columns` itself (a dict, or "myntra"/"small"), or the known
    layout whose columns the rows have. Attributes whose column is absent are left out.
    """
    keys = set(row_keys)
    if isinstance(columns, str):
        if columns not in KNOWN_COLUMNS:
            raise ValueError(f"Unknown column layout {columns!r}; use one of {sorted(KNOWN_COLUMNS)} or a dict.")
        columns = KNOWN_COLUMNS[columns]
    if columns is None:
        layouts = sorted(KNOWN_COLUMNS.values(), key=lambda layout: -len(keys & set(layout.values())))
        columns = layouts[0]
    unknown = set(columns) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"Unknown attribute(s) {sorted(unknown)} in the column mapping; known: {list(ATTRIBUTES)}.")
    present = {attribute: column for attribute, column in columns.items() if column in keys}
    if not present:
        raise ValueError(
            f"The catalog has none of the attribute columns {sorted(columns.values())} (its columns: {sorted(keys)})."
        )
    return present


@dataclass
class AttributeVocabulary:
    """Canonical attribute values and every phrase (a tuple of words) that names them."""

    values: dict  # attribute -> sorted list of canonical values
    columns: dict = field(default_factory=dict)  # attribute -> catalog column
    phrases: dict = field(default_factory=dict)  # phrase -> frozenset of (attribute, canonical value)
    longest: int = 1

    @classmethod
    def from_values(cls, values: dict, columns: dict = None, synonyms: bool = True) -> "AttributeVocabulary":
        """A vocabulary from {attribute: [canonical values]}, widened with synonyms and number forms."""
        unknown = set(values) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"Unknown attribute(s) {sorted(unknown)}; known: {list(ATTRIBUTES)}.")
        canonical = {a: sorted({str(v).strip() for v in vs if not is_missing(v)}) for a, vs in values.items()}
        if "colour" in canonical:
            canonical["colour"] = sorted({part for value in canonical["colour"] for part in split_colours(value)})
        vocabulary = cls(values=canonical, columns=dict(columns or {}))
        own_phrases = {tuple(words(value)) for vs in canonical.values() for value in vs}
        for attribute, names in canonical.items():
            by_key = {" ".join(words(name)): name for name in names}
            for key, name in by_key.items():
                phrase = tuple(key.split())
                for form in number_forms(phrase) if attribute in COUNTABLE else {phrase}:
                    vocabulary.add(form, attribute, name)
                for synonym in SYNONYMS.get(attribute, {}).get(key, []) if synonyms else []:
                    form = tuple(words(synonym))
                    if form not in own_phrases:  # a catalog's own value keeps its own meaning
                        vocabulary.add(form, attribute, name)
        return vocabulary

    @classmethod
    def from_rows(cls, rows, columns=None, synonyms: bool = True) -> "AttributeVocabulary":
        """A vocabulary from catalog rows (dicts): the values of each attribute column."""
        rows = list(rows)
        if not rows:
            raise ValueError("Cannot build an attribute vocabulary from no rows.")
        columns = columns_for({key for row in rows for key in row}, columns)  # rows may leave out empty cells
        values = {attribute: {row.get(column) for row in rows} for attribute, column in columns.items()}
        return cls.from_values(values, columns=columns, synonyms=synonyms)

    def add(self, phrase: tuple, attribute: str, value: str) -> None:
        self.phrases[phrase] = self.phrases.get(phrase, frozenset()) | {(attribute, value)}
        self.longest = max(self.longest, len(phrase))

    def usages_in(self, product_type: str) -> list:
        """The usages a product type's name holds ("Casual Shoes" -> Casual, "Sports Sandals" -> Sports)."""
        phrase = tuple(words(product_type))
        return [usage for usage in self.values.get("usage", []) if _contains(phrase, tuple(words(usage)))]

    def reference(self, row: dict) -> dict:
        """
        The row's canonical values per attribute (attributes whose cell is empty are left out). A cell naming
        several colours ("Black and White") gives each; a cell the vocabulary cannot read is kept as it is.
        """
        reference = {}
        for attribute, column in self.columns.items():
            cell = row.get(column)
            if is_missing(cell):
                continue
            named = extract_attributes(str(cell), self).get(attribute)
            reference[attribute] = named or [str(cell).strip()]
        return reference


def _contains(phrase: tuple, part: tuple) -> bool:
    return any(phrase[i:i + len(part)] == part for i in range(len(phrase) - len(part) + 1))


def find_mentions(text: str, vocabulary: AttributeVocabulary) -> list:
    """
    The phrases of `text` that name attribute values, left to right, longest first: a list of
    (phrase, frozenset of (attribute, canonical value)). One phrase may name values of several attributes
    (a catalog's "Flip Flops" is a product type and a subcategory).
    """
    mentions = []
    tokens = words(text)
    i = 0
    while i < len(tokens):
        for length in range(min(vocabulary.longest, len(tokens) - i), 0, -1):
            names = vocabulary.phrases.get(tuple(tokens[i:i + length]))
            if names:
                mentions.append((" ".join(tokens[i:i + length]), names))
                i += length
                break
        else:
            i += 1
    return mentions


def extract_attributes(text: str, vocabulary: AttributeVocabulary) -> dict:
    """{attribute: [canonical values named in text, in order, without repeats]} for every attribute of the vocabulary."""
    found = {attribute: [] for attribute in vocabulary.values}
    for _, names in find_mentions(text, vocabulary):
        for attribute, value in sorted(names):
            if value not in found[attribute]:
                found[attribute].append(value)
    return found
