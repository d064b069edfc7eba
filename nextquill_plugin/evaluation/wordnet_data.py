"""WordNet 3.0 for METEOR without a hub.

No PyPI package ships WordNet's data. Debian and Ubuntu do (``wordnet-base`` and
``wordnet-sense-index``, WordNet 3.0, the version ``nltk.download("wordnet")`` fetches), but NLTK
will not read /usr/share/wordnet in place and needs a ``lexnames`` file Debian does not install.
``install_wordnet`` copies the files into an NLTK data folder and writes ``lexnames`` (the fixed
table of WordNet 3.0's 45 lexicographer files, documented in lexnames(5WN)).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DEBIAN_WORDNET = Path("/usr/share/wordnet")
DEBIAN_PACKAGES = "wordnet-base wordnet-sense-index"
# Files NLTK's WordNetCorpusReader opens (lexnames is written, not copied).
WORDNET_FILES = (
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "index.sense",
    "cntlist.rev",
)
# WordNet 3.0's lexicographer files, numbered 00-44 in this order (lexnames(5WN)).
LEXICOGRAPHER_FILES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

MISSING_WORDNET = (
    "METEOR needs the WordNet corpus, which NLTK did not find. Install it one of two ways:\n"
    "  online:  nextquill setup-wordnet (NLTK's download)\n"
    f"  offline (Debian/Ubuntu): apt-get install {DEBIAN_PACKAGES} && nextquill setup-wordnet\n"
    "(`make test` and `make demo` do the offline route into the virtual environment.)"
)


def default_nltk_dir() -> Path:
    """``<sys.prefix>/nltk_data``: on NLTK's search path for this interpreter (or venv)."""
    return Path(sys.prefix) / "nltk_data"


def lexnames_text() -> str:
    """The ``lexnames`` file: number, lexicographer file name, syntactic category."""
    return "".join(
        f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n"
        for i, name in enumerate(LEXICOGRAPHER_FILES)
    )


def install_wordnet(source: Path = DEBIAN_WORDNET, nltk_dir: Path | None = None) -> Path:
    """Copy Debian's WordNet 3.0 into ``nltk_dir/corpora/wordnet`` and write ``lexnames``."""
    missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} lacks {', '.join(missing)}; install the Debian packages {DEBIAN_PACKAGES} "
            "(apt-get install ...) or point --source at a WordNet 3.0 dict folder."
        )
    target = (nltk_dir or default_nltk_dir()) / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, target / name)
    (target / "lexnames").write_text(lexnames_text())
    return target


def debian_wordnet_installed() -> bool:
    """Whether Debian's wordnet-base and wordnet-sense-index put every file NLTK opens."""
    return all((DEBIAN_WORDNET / name).is_file() for name in WORDNET_FILES)


def download_wordnet(nltk_dir: Path | None = None) -> Path:
    """NLTK's own download of WordNet 3.0 into ``nltk_dir`` (it needs the network); a
    RuntimeError naming both routes when it fails (``nltk.download`` itself returns False)."""
    import nltk  # on use: seconds to import

    target = nltk_dir or default_nltk_dir()
    if not nltk.download("wordnet", download_dir=str(target), quiet=True):
        raise RuntimeError("NLTK could not download WordNet (no network?). " + MISSING_WORDNET)
    return target / "corpora" / "wordnet"


def require_wordnet():
    """NLTK's WordNet reader, loaded; a clear error naming both install routes if missing."""
    from nltk.corpus import wordnet  # NLTK takes seconds to import; setup-wordnet copies first

    try:
        wordnet.ensure_loaded()
    except LookupError as error:
        raise RuntimeError(MISSING_WORDNET) from error
    return wordnet
