"""Knowledge base: the owner's files -> chunks -> a BM25 index -> the knowledge block of Gemini's system instruction.

Owns reading KNOWLEDGE_DIR (`.txt`/`.md` in any subfolder, UTF-8 with bad bytes reported), chunking that keeps
headings with their text, pt-BR normalisation (case and accents folded, stopwords, Snowball stems, one-typo
correction), BM25 retrieval (bm25s, local), the whole-or-retrieve choice, and the watcher thread that reloads
on file changes or on a reload signal shared through Redis. Does not call Gemini or know about chats.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_PORTUGUESE

from memory import Turn
from redis_link import RedisLink

log = logging.getLogger(__name__)

KNOWLEDGE_SUFFIXES = (".md", ".txt")
MAX_FILE_BYTES = 2 * 1024 * 1024  # a larger file is skipped and reported: it is almost surely not a FAQ
CHUNK_MAX_CHARS = 1200  # about 300 tokens: one topic, small enough that top-k chunks stay cheap
QUERY_HISTORY_TURNS = 2  # "e quanto custa?" only makes sense with the turn before it
BURST_WEIGHT = 2.0  # the burst outweighs the history turns in the query
MIN_TYPO_STEM_CHARS = 4  # shorter stems have too many neighbours one edit away
TOKENIZE_CACHE_WORDS = 200_000

# The grounding rule, in the customers' language: facts only from the knowledge below, else "vou confirmar".
GROUNDING_RULE = (
    "Regras sobre informações da empresa:\n"
    "- Preços, valores, horários, estoque, prazos, entregas, formas de pagamento e políticas: responda somente "
    "com o que está na BASE DE CONHECIMENTO abaixo, sem inventar, estimar ou completar.\n"
    "- Se a informação pedida não estiver na base, não chute: diga ao cliente que vai confirmar com a equipe "
    "e retornar em breve.\n"
    "- Não mencione a base, arquivos ou trechos ao cliente; responda com naturalidade."
)
HEADER_WHOLE = "BASE DE CONHECIMENTO (completa):"
HEADER_RETRIEVED = "BASE DE CONHECIMENTO (trechos mais relevantes para esta conversa; podem não cobrir tudo):"
HEADER_NOTHING_FOUND = "BASE DE CONHECIMENTO: nenhum trecho relevante para esta conversa."
HEADER_EMPTY = "BASE DE CONHECIMENTO: vazia."

# Words that carry no topic in a customer's message: NLTK's Portuguese list (via bm25s) plus chat fillers.
CHAT_FILLERS = (
    "oi ola ei opa bom boa dia tarde noite tudo bem blz beleza obrigado obrigada obg vlw valeu favor "
    "vc vcs voce voces pra pro pras pros pq porque tb tbm tmb td q ne ai la aqui entao ok okay "
    "queria quero gostaria saber pode poderia consegue sim nao moco moca senhor senhora gente quanto quanta "
    "quantos quantas"
)


# ----- normalisation ----------------------------------------------------------------------------------------


_COMBINING_MARKS = re.compile(r"[\u0300-\u036f]+")


def fold(text: str) -> str:
    """Lower case without accents: "Preço ÚNICO" -> "preco unico" (customers often type without them)."""
    lowered = text.casefold()
    if lowered.isascii():
        return lowered
    return _COMBINING_MARKS.sub("", unicodedata.normalize("NFKD", lowered))


_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(fold(word) for word in STOPWORDS_PORTUGUESE) | frozenset(CHAT_FILLERS.split())
_stemmers = threading.local()  # PyStemmer objects must not be shared between threads


def _singular_ao(word: str) -> str:
    """Folded "-ões/-ães" plurals to "-ao", so "devolucoes" and "devolucao" share one stem."""
    if len(word) >= 4 and word.endswith(("oes", "aes")):
        return word[:-3] + "ao"
    return word


@functools.lru_cache(maxsize=TOKENIZE_CACHE_WORDS)
def _stem(word: str) -> str:
    stemmer = getattr(_stemmers, "portuguese", None)
    if stemmer is None:
        stemmer = _stemmers.portuguese = Stemmer.Stemmer("portuguese")
    return stemmer.stemWord(_singular_ao(word))


def tokenize(text: str) -> list[str]:
    """Stems of the words of `text` that carry meaning: folded, stopwords and one-letter words dropped.

    Accents are folded before stemming so that "preço" and "preco" meet in one stem whatever the customer typed.
    """
    words = _WORD.findall(fold(text))
    return [_stem(word) for word in words if word not in STOPWORDS and (len(word) > 1 or word.isdigit())]


# ----- files and chunks -------------------------------------------------------------------------------------


def labelled(source: str, text: str) -> str:
    """Knowledge as Gemini sees it: where it comes from on a label line, then the text."""
    return f"--- fonte: {source} ---\n{text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """One searchable piece of a file, with the headings it sits under."""

    source: str  # path relative to KNOWLEDGE_DIR, with "/"
    heading: str  # "Bolos > Bolos caseiros", or "" before the first heading
    text: str

    def render(self) -> str:
        """The chunk as Gemini sees it: its file (and headings) on a label line, then the text."""
        return labelled(f"{self.source} | {self.heading}" if self.heading else self.source, self.text)

    def index_text(self) -> str:
        """What BM25 indexes: file and folder names and headings count as words of the chunk."""
        return f"{re.sub(r'[/_.-]+', ' ', self.source)}\n{self.heading}\n{self.text}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    path: str  # relative to KNOWLEDGE_DIR
    text: str
    chunks: int


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) of each Markdown `#` section, in order; text before the first heading has no path."""
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            sections.append((" > ".join(title for _, title in stack), content))
        body.clear()

    for line in text.splitlines():
        match = _HEADING.match(line)
        if match is None:
            body.append(line)
            continue
        flush()
        level = len(match.group(1))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, match.group(2).strip()))
    flush()
    return sections


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph longer than `max_chars`, cut at line ends, then at spaces."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces: list[str] = []
    current = ""
    for word in re.split(r"(?<=\n)|(?<= )", paragraph):
        if current and len(current) + len(word) > max_chars:
            pieces.append(current.strip())
            current = ""
        current += word
        while len(current) > max_chars:  # a single "word" longer than a chunk (a URL, a table row)
            pieces.append(current[:max_chars])
            current = current[max_chars:]
    if current.strip():
        pieces.append(current.strip())
    return pieces


def chunk_text(source: str, text: str, max_chars: int = CHUNK_MAX_CHARS) -> list[Chunk]:
    """Split one file into chunks of at most `max_chars` characters of text.

    A chunk never spans two sections; paragraphs of one section are packed together until the limit, and
    every chunk of a section carries the section's heading path, so "R$ 45" stays next to "Bolo de cenoura".
    """
    chunks: list[Chunk] = []
    for heading, body in _sections(text):
        paragraphs = [piece for block in re.split(r"\n\s*\n", body) for piece in _pieces(block.strip(), max_chars)]
        current: list[str] = []
        for paragraph in filter(None, paragraphs):
            if current and sum(len(p) + 2 for p in current) + len(paragraph) > max_chars:
                chunks.append(Chunk(source=source, heading=heading, text="\n\n".join(current)))
                current = []
            current.append(paragraph)
        if current:
            chunks.append(Chunk(source=source, heading=heading, text="\n\n".join(current)))
    return chunks


def _visible_files(directory: Path) -> list[Path]:
    """Knowledge files under `directory`, sorted; hidden files and folders (.git, editor swap files) skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(root, name)
            for name in sorted(files)
            if not name.startswith(".") and name.lower().endswith(KNOWLEDGE_SUFFIXES)
        ]
    return sorted(found, key=lambda path: path.relative_to(directory).as_posix())


def fingerprint(directory: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (mtime_ns, size, inode) of every knowledge file: what the watcher compares between looks."""
    prints: dict[str, tuple[int, int, int]] = {}
    for path in _visible_files(directory):
        try:
            stat = path.stat()
        except OSError:  # removed between the listing and the stat
            continue
        prints[path.relative_to(directory).as_posix()] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return prints


def decode(data: bytes) -> tuple[str, str | None]:
    """(text, problem): UTF-8 (a BOM is dropped); undecodable bytes become U+FFFD and are reported, never raised."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        bad = sum(1 for ch in data.decode("utf-8-sig", errors="replace") if ch == "\ufffd")
        problem = f"not valid UTF-8 (first bad byte at {exc.start}, {bad} replaced): save it as UTF-8"
        return data.decode("utf-8-sig", errors="replace"), problem


def read_files(directory: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """([(relative path, text)], problems) of every knowledge file; unreadable files are reported and skipped."""
    if not directory.is_dir():
        return [], [f"{directory}: not a folder (KNOWLEDGE_DIR); nothing loaded until it exists"]
    texts: list[tuple[str, str]] = []
    problems: list[str] = []
    for path in _visible_files(directory):
        name = path.relative_to(directory).as_posix()
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{name}: larger than {MAX_FILE_BYTES} bytes, skipped")
                continue
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"{name}: cannot be read ({exc.__class__.__name__}), skipped")
            continue
        text, problem = decode(data)
        if problem:
            problems.append(f"{name}: {problem}")
        texts.append((name, text.replace("\r\n", "\n").strip()))
    return texts, problems


# ----- index ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    chunk: Chunk
    score: float


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


class Index:
    """BM25 over chunks (bm25s, numpy only), plus a one-edit typo corrector over the index's own stems.

    Immutable once built, so searches need no lock while the watcher builds the next one.
    """

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = tuple(chunks)
        corpus = [tokenize(chunk.index_text()) for chunk in self.chunks]
        self._bm25 = bm25s.BM25()
        self._vocab: dict[str, int] = {}
        self._neighbours: dict[str, tuple[str, ...]] = {}
        if not self.chunks:
            return
        self._bm25.index(corpus, show_progress=False)
        self._vocab = {term: i for term, i in self._bm25.vocab_dict.items() if term}
        document_frequency: dict[str, int] = {}
        for tokens in corpus:
            for term in set(tokens):
                document_frequency[term] = document_frequency.get(term, 0) + 1
        # SymSpell-style: every stem and its one-letter deletions point back to the stem, so a typo
        # (a letter missing, extra, swapped or wrong) meets its stem through a shared key.
        neighbours: dict[str, list[str]] = {}
        for term in self._vocab:
            if len(term) >= MIN_TYPO_STEM_CHARS:
                for key in _deletes(term) | {term}:
                    neighbours.setdefault(key, []).append(term)
        self._neighbours = {
            key: tuple(sorted(terms, key=lambda t: (-document_frequency[t], t))) for key, terms in neighbours.items()
        }

    def approx_bytes(self) -> int:
        """About what the index holds in memory: BM25's score arrays, the vocabulary and the typo keys (Python
        objects counted at their size, dict and tuple slots at 8 bytes each)."""
        scores = getattr(self._bm25, "scores", None)
        arrays = sum(int(getattr(a, "nbytes", 0)) for a in scores.values()) if isinstance(scores, dict) else 0
        vocab = sum(sys.getsizeof(term) + 3 * 8 + 28 for term in self._vocab)
        typos = sum(sys.getsizeof(key) + sys.getsizeof(terms) + 3 * 8 for key, terms in self._neighbours.items())
        return arrays + vocab + typos

    def correct(self, term: str) -> str | None:
        """`term` if indexed, else the most frequent indexed stem one edit away, else None."""
        if term in self._vocab:
            return term
        if len(term) < MIN_TYPO_STEM_CHARS:
            return None
        candidates = [t for key in _deletes(term) | {term} for t in self._neighbours.get(key, ())]
        return candidates[0] if candidates else None

    def _ids(self, terms: Iterable[str]) -> list[int]:
        corrected = {self.correct(term) for term in terms}
        return sorted(self._vocab[term] for term in corrected if term is not None)

    def search(self, terms: Sequence[str], k: int, *, extra_terms: Sequence[str] = ()) -> list[Hit]:
        """The best `k` chunks with a positive score; `terms` weigh BURST_WEIGHT times `extra_terms`."""
        if not self.chunks or k <= 0:
            return []
        main_ids = self._ids(terms)
        extra_ids = sorted(set(self._ids(extra_terms)) - set(main_ids))
        if not main_ids and not extra_ids:
            return []
        scores = np.zeros(len(self.chunks), dtype=np.float32)
        if main_ids:
            scores += BURST_WEIGHT * self._bm25.get_scores_from_ids(main_ids)
        if extra_ids:
            scores += self._bm25.get_scores_from_ids(extra_ids)
        k = min(k, len(self.chunks))
        best = np.argpartition(scores, -k)[-k:]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Hit(chunk=self.chunks[i], score=float(scores[i])) for i in best if scores[i] > 0]


# ----- the knowledge base -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything loaded from the folder at one moment; replaced whole on reload, never changed."""

    files: tuple[SourceFile, ...] = ()
    index: Index = field(default_factory=lambda: Index(()))
    problems: tuple[str, ...] = ()
    fingerprint: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    loaded_at: float = 0.0
    build_seconds: float = 0.0

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return self.index.chunks

    @property
    def total_chars(self) -> int:
        return sum(len(f.text) for f in self.files)

    def whole_text(self) -> str:
        """Every file, labelled with its name: the knowledge block of a small base, and the preview."""
        return "\n\n".join(labelled(f.path, f.text) for f in self.files if f.text)

    def approx_bytes(self) -> int:
        """About what the snapshot holds in memory: the files' and chunks' texts, and the index."""
        texts = sum(sys.getsizeof(f.text) for f in self.files)
        chunks = sum(sys.getsizeof(c.text) + sys.getsizeof(c.heading) + 100 for c in self.index.chunks)
        return texts + chunks + self.index.approx_bytes()


class KnowledgeBase:
    """The loaded knowledge of one process. `context_for()` is what the prompt gets; `reload()` swaps it."""

    def __init__(
        self,
        directory: str,
        *,
        top_k: int = 4,
        whole_max_chars: int = 30_000,
        chunk_max_chars: int = CHUNK_MAX_CHARS,
        cache: KnowledgeCache | None = None,
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.top_k = top_k
        self.whole_max_chars = whole_max_chars
        self.chunk_max_chars = chunk_max_chars
        # A tenant's base (tenants.py) is kept by the process's KnowledgeCache: read at its first use, unloaded
        # when others used more recently need the memory, and read again at its next use.
        self.cache = cache
        self.loaded = False
        self._snapshot = Snapshot()
        self._reload_lock = threading.Lock()  # the watcher and POST /reload-context never build twice at once

    @property
    def configured(self) -> bool:
        return self.directory is not None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def mode(self) -> str:
        """ "off" (no KNOWLEDGE_DIR), "whole" (all of it goes into the prompt) or "retrieval" (top-k chunks)."""
        return self._mode(self._snapshot)

    def _mode(self, snapshot: Snapshot) -> str:
        if not self.configured:
            return "off"
        return "whole" if snapshot.total_chars <= self.whole_max_chars else "retrieval"

    def reload(self) -> Snapshot:
        """Read the folder again and swap the new snapshot in (searches in flight keep the old one)."""
        if self.directory is None:
            return self._snapshot
        with self._reload_lock:
            started = time.perf_counter()
            prints = fingerprint(self.directory) if self.directory.is_dir() else {}
            texts, problems = read_files(self.directory)
            files: list[SourceFile] = []
            chunks: list[Chunk] = []
            for name, text in texts:
                file_chunks = chunk_text(name, text, self.chunk_max_chars)
                files.append(SourceFile(path=name, text=text, chunks=len(file_chunks)))
                chunks += file_chunks
            snapshot = Snapshot(
                files=tuple(files),
                index=Index(chunks),
                problems=tuple(problems),
                fingerprint=prints,
                loaded_at=time.time(),
                build_seconds=time.perf_counter() - started,
            )
            self._snapshot = snapshot
            self.loaded = True
        for problem in problems:
            log.warning("knowledge file problem: %s", problem)
        log.info(
            "knowledge loaded files=%d chunks=%d chars=%d mode=%s problems=%d in %.3fs",
            len(files),
            len(chunks),
            snapshot.total_chars,
            self._mode(snapshot),
            len(problems),
            snapshot.build_seconds,
        )
        return snapshot

    def current(self) -> Snapshot:
        """The snapshot a reply would use now: a tenant's base is read through its cache when it is not loaded."""
        if self.cache is None or not self.configured:
            return self._snapshot
        return self.cache.acquire(self)

    def summary(self, preview_chars: int) -> dict[str, object]:
        """What is loaded, for GET /context/preview: files, chunk counts, problems and the first characters."""
        snapshot = self.current()
        return {
            "directory": str(self.directory or ""),
            "mode": self._mode(snapshot),
            "files": [{"path": f.path, "chars": len(f.text), "chunks": f.chunks} for f in snapshot.files],
            "chunks": len(snapshot.chunks),
            "chars": snapshot.total_chars,
            "whole_max_chars": self.whole_max_chars,
            "top_k": self.top_k,
            "problems": list(snapshot.problems),
            "loaded_at": snapshot.loaded_at,
            "build_seconds": round(snapshot.build_seconds, 4),
            "preview": snapshot.whole_text()[:preview_chars],
        }

    def unload(self) -> None:
        """Drop the loaded snapshot (the cache needs the memory); the next `acquire` reads the folder again."""
        with self._reload_lock:
            self._snapshot = Snapshot()
            self.loaded = False

    def has_changed(self) -> bool:
        """True when a knowledge file was added, changed or removed since the last load."""
        if self.directory is None:
            return False
        current = fingerprint(self.directory) if self.directory.is_dir() else {}
        return current != self._snapshot.fingerprint

    def search(self, query: str, k: int | None = None, *, context: str = "") -> list[Hit]:
        """Top chunks for `query` (with `context`, e.g. the last turns, as lower-weight words)."""
        k = self.top_k if k is None else k
        return self.current().index.search(tokenize(query), k, extra_terms=tokenize(context))

    def context_for(self, history: Sequence[Turn], user_text: str) -> str:
        """The knowledge block of the system instruction for this burst: the grounding rule and either the whole
        base or the chunks retrieved for the burst and the last turns; "" when no KNOWLEDGE_DIR is set."""
        if not self.configured:
            return ""
        # One snapshot for the whole call, whatever the watcher swaps in (or the cache unloads) meanwhile.
        snapshot = self.current()
        if self._mode(snapshot) == "whole":
            whole = snapshot.whole_text()
            return f"{GROUNDING_RULE}\n\n{HEADER_WHOLE}\n\n{whole}" if whole else f"{GROUNDING_RULE}\n\n{HEADER_EMPTY}"
        recent = " ".join(turn.text for turn in history[-QUERY_HISTORY_TURNS:])
        hits = snapshot.index.search(tokenize(user_text), self.top_k, extra_terms=tokenize(recent))
        log.debug("knowledge retrieved %s", ", ".join(f"{h.chunk.source}:{h.score:.2f}" for h in hits) or "nothing")
        if not hits:
            return f"{GROUNDING_RULE}\n\n{HEADER_NOTHING_FOUND}"
        return f"{GROUNDING_RULE}\n\n{HEADER_RETRIEVED}\n\n" + "\n\n".join(hit.chunk.render() for hit in hits)


class KnowledgeCache:
    """The tenants' knowledge bases of one process (tenants.py), kept within `budget_bytes` (KNOWLEDGE_CACHE_MB):
    a base is read at its first use; when the loaded ones add up to more than the budget, the least recently used
    are unloaded (never the one in use), and read again at their next use. The sizes are estimates
    (`Snapshot.approx_bytes`); bench row T1 measures the process beside them."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.loads = 0  # bases read (first uses and reads again after an unload)
        self.evictions = 0
        self._loaded: OrderedDict[int, tuple[KnowledgeBase, int]] = OrderedDict()  # id(base) -> (base, bytes)
        self._loading: dict[int, threading.Lock] = {}  # id(base) -> held by the one reply that reads it now
        self._lock = threading.Lock()

    def acquire(self, base: KnowledgeBase) -> Snapshot:
        """The base's snapshot, read now if it is not loaded; marks it the most recently used. Replies that need a
        base while another reads it wait for that read instead of reading the folder again each."""
        with self._lock:
            if self._is_loaded(base):
                return base.snapshot
            loading = self._loading.setdefault(id(base), threading.Lock())
        # Outside the cache's lock: other tenants' replies go on while this one reads its folder.
        with loading:
            with self._lock:
                if self._is_loaded(base):  # read by the reply this one waited for
                    return base.snapshot
            snapshot = base.reload()
            with self._lock:
                self.loads += 1
                self._loaded[id(base)] = (base, snapshot.approx_bytes())
                self._loaded.move_to_end(id(base))
                self._evict(keep=id(base))
        return snapshot

    def _is_loaded(self, base: KnowledgeBase) -> bool:
        """True (and the base marked the most recently used) when its snapshot is in memory; under the lock."""
        if id(base) in self._loaded and base.loaded:
            self._loaded.move_to_end(id(base))
            return True
        return False

    def _evict(self, *, keep: int) -> None:
        while self.loaded_bytes() > self.budget_bytes and len(self._loaded) > 1:
            oldest = next(iter(self._loaded))
            if oldest == keep:
                break
            base, _ = self._loaded.pop(oldest)
            base.unload()
            self.evictions += 1

    def unload_all(self) -> None:
        """Unload every base: each is read again at its next use (POST /reload-context)."""
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), OrderedDict()
        for base, _ in loaded:
            base.unload()

    def unload_changed(self) -> int:
        """Unload each loaded base whose files were added, changed or removed since it was read (RAG_AUTO_RELOAD),
        to be read again at its next use; a base that is not loaded is not looked at. Returns how many."""
        with self._lock:
            loaded = [base for base, _ in self._loaded.values()]
        changed = [base for base in loaded if base.has_changed()]  # outside the lock: it reads folders
        with self._lock:  # as an eviction does: `acquire` never hands out a base half unloaded
            for base in changed:
                if self._loaded.pop(id(base), None) is not None:
                    base.unload()
                    log.info("knowledge unloaded: files changed in %s", base.directory)
        return len(changed)

    def forget(self, base: KnowledgeBase) -> None:
        """A base no longer used (its tenant's settings changed): its memory is no longer counted."""
        with self._lock:
            self._loading.pop(id(base), None)
            if self._loaded.pop(id(base), None) is not None:
                base.unload()

    def loaded_bytes(self) -> int:
        return sum(size for _, size in self._loaded.values())

    def health(self) -> dict[str, int]:
        with self._lock:
            return {
                "loaded": len(self._loaded),
                "bytes": self.loaded_bytes(),
                "budget_bytes": self.budget_bytes,
                "loads": self.loads,
                "evictions": self.evictions,
            }


# ----- reloading in every process ---------------------------------------------------------------------------


class ReloadSignal:
    """A counter in Redis that POST /reload-context bumps, so every process reloads, not only the one asked."""

    def __init__(self, link: RedisLink, key: str) -> None:
        self.link = link
        self.key = key

    def current(self) -> str | None:
        """The counter's value ("" before the first bump), or None when Redis cannot be asked now."""
        return self.link.run(lambda client: str(client.get(self.key) or ""), lambda: None)

    def bump(self) -> str | None:
        """Tell every process to reload; returns the new value, or None when Redis cannot be reached."""
        return self.link.run(lambda client: str(client.incr(self.key)), lambda: None)


class Watcher:
    """A daemon thread that reloads the knowledge base when its files change (RAG_AUTO_RELOAD) or the reload
    signal moves, checking every `interval_seconds`. With a `cache` (the tenants' bases, tenants.py) the same look
    unloads a loaded tenant's base whose files changed, and a signal unloads them all: each is read again at its
    next use, and a base nobody loaded stays unread. `check_once()` is one look, for tests."""

    def __init__(
        self,
        knowledge: KnowledgeBase,
        *,
        interval_seconds: float,
        watch_files: bool = True,
        signal: ReloadSignal | None = None,
        cache: KnowledgeCache | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.interval_seconds = interval_seconds
        self.watch_files = watch_files
        self.signal = signal
        self.cache = cache
        self._seen_signal: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> bool:
        """Reload if a file changed or another process asked for it; True when it reloaded (or unloaded a
        tenant's base whose files changed)."""
        signalled = False
        if self.signal is not None:
            value = self.signal.current()
            if value is not None:
                # The first value seen after Redis came back is a baseline, not a request.
                signalled = self._seen_signal is not None and value != self._seen_signal
                self._seen_signal = value
        if signalled:
            log.info("knowledge reload: reload requested")
            self._reload_all()
            return True
        changed = False
        if self.watch_files and self.knowledge.has_changed():
            log.info("knowledge reload: files changed")
            self.knowledge.reload()
            changed = True
        if self.watch_files and self.cache is not None:
            changed = self.cache.unload_changed() > 0 or changed
        return changed

    def _reload_all(self) -> None:
        """The environment's knowledge read again now; the tenants' unloaded, to be read again at their next use."""
        self.knowledge.reload()
        if self.cache is not None:
            self.cache.unload_all()

    def reload_everywhere(self) -> bool:
        """Reload here now and ask every other process to reload; False when only this one could be told."""
        self._reload_all()
        value = self.signal.bump() if self.signal is not None else None
        if value is not None:
            self._seen_signal = value  # this process is already up to date
        return value is not None

    def run_forever(self) -> None:
        if self.signal is not None:
            self._seen_signal = self.signal.current()  # the baseline: what was asked before this process loaded
        while not self._stop.wait(self.interval_seconds):
            try:
                self.check_once()
            except Exception:  # the watcher must outlive one bad look (a folder on a flaky mount)
                log.exception("knowledge watcher check failed; keeping the loaded knowledge")

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="knowledge-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
