"""knowledge.py on real files: normalisation, chunking, loading (bad bytes, odd folders), retrieval quality over
the pt-BR test knowledge base in tests/fixtures/knowledge/, the whole-or-retrieve choice, and reloading (watcher
thread, and the reload signal shared through a real Redis).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from knowledge import (
    GROUNDING_RULE,
    HEADER_EMPTY,
    HEADER_NOTHING_FOUND,
    HEADER_RETRIEVED,
    HEADER_WHOLE,
    MAX_FILE_BYTES,
    Index,
    KnowledgeBase,
    ReloadSignal,
    Watcher,
    chunk_text,
    fold,
    tokenize,
)
from memory import Turn
from redis_link import RedisLink
from tests.conftest import RedisServer, free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "knowledge"
SIGNAL_KEY = "wa_test:knowledge:generation"

# Customers' questions as they type them (no accents, abbreviations, typos) -> the file that answers them.
RETRIEVAL_CASES: list[tuple[str, str]] = [
    ("qnto custa o bolo de cenoura com cobertura de chocolate?", "produtos/bolos.md"),
    ("bolo de chocolat com morango quanto sai o kilo", "produtos/bolos.md"),
    ("voces abrem domingo? que horas fecha", "horarios.md"),
    ("abre no feriado de natal?", "horarios.md"),
    ("vcs entregam em guarulhos? qual o valor do frete", "entrega/entregas.md"),
    ("qual horario que sai a entraga", "entrega/entregas.md"),
    ("da pra parcelar no cartao?", "pagamento.md"),
    ("aceita pix", "pagamento.md"),
    ("tem alguma coisa sem gluten pra minha sobrinha celiaca", "produtos/veganos-e-sem-gluten.md"),
    ("tem brigadeiro vegano sem lactose", "produtos/veganos-e-sem-gluten.md"),
    ("quero encomendar um bolo pra festa de aniversaio com tema de unicornio", "encomendas/bolo-personalizado.md"),
    ("com quantos dias de antecedencia preciso fazer a encomeda", "encomendas/como-encomendar.md"),
    ("preciso pagar sinal pra encomendar?", "encomendas/como-encomendar.md"),
    ("quanto tempo dura o bolo fora da geladeira", "conservacao.txt"),
    ("o bolo chegou amassado, vcs trocam?", "politicas/trocas-e-devolucoes.md"),
    ("se eu cancelar a encomenda devolvem o sinal?", "politicas/cancelamento.md"),
    ("onde fica a loja? tem estacionamento", "endereco-e-contato.md"),
    ("preco do cento de brigadeiro", "produtos/doces-finos.md"),
    ("tem coxinha? quanto e o cento", "produtos/salgados.md"),
    ("qual o preco do kit festa pra 30 pessoas", "precos-kit-festa.md"),
    ("vcs fazem coffe break pra empresa?", "eventos/coffee-break-corporativo.md"),
    ("tem pao de queijo quentinho de manha?", "produtos/paes.md"),
    ("tem capuccino?", "produtos/bebidas.txt"),
    ("posso buscar minha encomenda ai na loja?", "entrega/retirada.txt"),
    ("como funciona o cartao fidelidade", "fidelidade.md"),
    ("torta de limao tem hj?", "produtos/tortas.md"),
    ("desde quando a doceria existe, quem e a dona", "sobre.md"),
    ("tao contratando? quero mandar curriculo", "trabalhe-conosco.txt"),
    ("tem bolo de pote?", "faq.md"),
    ("posso levar meu cachorro", "faq.md"),
]
REQUIRED_TOP3_RATE = 0.90


@pytest.fixture(scope="module")
def fixture_kb() -> KnowledgeBase:
    kb = KnowledgeBase(str(FIXTURES), top_k=3, whole_max_chars=0)
    kb.reload()
    return kb


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    """A writable copy of the test knowledge base."""
    target = tmp_path / "conhecimento"
    shutil.copytree(FIXTURES, target)
    return target


def wait_for(predicate: object, timeout: float, what: str) -> float:
    """Poll `predicate()` until true; returns the seconds it took (fails on timeout)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")


def sources(kb: KnowledgeBase, query: str, k: int = 3) -> list[str]:
    return [hit.chunk.source for hit in kb.search(query, k)]


# ----- normalisation ----------------------------------------------------------------------------------------


def test_fold_drops_case_and_accents() -> None:
    assert fold("Preço ÚNICO de Açúcar, Pão e Maçã") == "preco unico de acucar, pao e maca"


@pytest.mark.parametrize(
    "spellings",
    [
        ("preço", "PRECO", "preços", "Precos"),
        ("devolução", "devolucao", "devoluções", "DEVOLUCOES"),
        ("entrega", "entregas", "Entregam"),
        ("horário", "horarios", "HORÁRIOS"),
        ("pão", "pao", "pães", "paes"),
    ],
)
def test_spellings_of_one_word_share_one_token(spellings: tuple[str, ...]) -> None:
    tokens = {tuple(tokenize(word)) for word in spellings}
    assert len(tokens) == 1, tokens
    assert len(next(iter(tokens))) == 1


def test_stopwords_and_chat_fillers_are_dropped() -> None:
    assert tokenize("Oi, boa tarde! Vc tem o que eu queria? Obrigada") == []
    assert tokenize("Oi, vcs tem torta de limão?") == tokenize("torta limao")


def test_typos_one_edit_away_reach_the_indexed_stem() -> None:
    index = Index(chunk_text("a.md", "# Entregas\nEntregamos com frete grátis. Cappuccino cremoso."))
    for typo, word in [("entraga", "entrega"), ("fretee", "frete"), ("capuccino", "cappuccino")]:
        (typo_stem,), (stem,) = tokenize(typo), tokenize(word)
        assert typo_stem != stem
        assert index.correct(typo_stem) == stem
    assert index.correct(tokenize("xilofone")[0]) is None


# ----- chunking ---------------------------------------------------------------------------------------------


def test_chunks_keep_their_heading_path() -> None:
    text = (
        "# Bolos\n\n## Caseiros\n\nBolo de cenoura: R$ 48\n\n## De festa\n\nChocolate: R$ 98 o quilo\n\n"
        "# Tortas\n\nTorta de limão: R$ 89\n"
    )
    chunks = chunk_text("produtos.md", text)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Bolos > Caseiros", "Bolo de cenoura: R$ 48"),
        ("Bolos > De festa", "Chocolate: R$ 98 o quilo"),
        ("Tortas", "Torta de limão: R$ 89"),
    ]
    assert chunks[0].render() == "--- fonte: produtos.md | Bolos > Caseiros ---\nBolo de cenoura: R$ 48"


def test_text_before_the_first_heading_and_plain_txt_have_no_heading() -> None:
    chunks = chunk_text("avisos.txt", "Aviso geral.\n\nOutro parágrafo.\n# Depois\nCom título.")
    assert [(c.heading, c.text) for c in chunks] == [
        ("", "Aviso geral.\n\nOutro parágrafo."),
        ("Depois", "Com título."),
    ]
    assert chunks[0].render() == "--- fonte: avisos.txt ---\nAviso geral.\n\nOutro parágrafo."


def test_long_sections_are_split_and_every_piece_keeps_the_heading() -> None:
    paragraphs = [f"Sabor número {n}: massa fofinha, recheio cremoso e cobertura. " * 3 for n in range(30)]
    long_line = "x" * 700
    text = "# Cardápio\n## Bolos do dia\n\n" + "\n\n".join(paragraphs) + "\n\n" + long_line
    chunks = chunk_text("cardapio.md", text, max_chars=500)
    assert len(chunks) > 5
    assert all(c.heading == "Cardápio > Bolos do dia" for c in chunks)
    assert all(len(c.text) <= 500 for c in chunks)
    rebuilt = "".join("".join(c.text.split()) for c in chunks)
    assert rebuilt == "".join("".join(p.split()) for p in [*paragraphs, long_line])


def test_headings_without_text_make_no_chunk() -> None:
    assert chunk_text("vazio.md", "# Título\n\n## Seção vazia\n\n   \n") == []


# ----- loading ----------------------------------------------------------------------------------------------


def test_the_test_knowledge_base_loads_every_file(fixture_kb: KnowledgeBase) -> None:
    snapshot = fixture_kb.snapshot
    paths = [f.path for f in snapshot.files]
    assert len(paths) == 23
    assert paths == sorted(paths)
    assert {"produtos/bolos.md", "entrega/retirada.txt", "horarios.md"} <= set(paths)
    assert snapshot.problems == ()
    assert all(f.chunks >= 1 for f in snapshot.files)
    assert len(snapshot.chunks) == sum(f.chunks for f in snapshot.files)


def test_only_visible_txt_and_md_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "sub" / "deeper" / "prazos.MD").write_text("# Prazos\nEncomendas em 48 horas.", encoding="utf-8")
    (tmp_path / "notas.txt").write_text("Notas da loja.", encoding="utf-8")
    (tmp_path / "tabela.pdf").write_bytes(b"%PDF-1.4 binary")
    (tmp_path / "foto.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / ".rascunho.md").write_text("rascunho escondido", encoding="utf-8")
    (tmp_path / ".git" / "config.md").write_text("não é conhecimento", encoding="utf-8")
    kb = KnowledgeBase(str(tmp_path))
    snapshot = kb.reload()
    assert [f.path for f in snapshot.files] == ["notas.txt", "sub/deeper/prazos.MD"]
    assert snapshot.problems == ()


def test_bad_utf8_is_reported_and_the_rest_still_loads(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("Preço do bolo: R$ 10. Pão de açúcar.".encode("latin-1"))
    (tmp_path / "ok.md").write_text("# Horário\nAbrimos às 9h.", encoding="utf-8")
    (tmp_path / "bom.md").write_bytes("\ufeff# Com BOM\nTexto com BOM.".encode())
    kb = KnowledgeBase(str(tmp_path))
    snapshot = kb.reload()
    assert [f.path for f in snapshot.files] == ["bom.md", "latin1.txt", "ok.md"]
    (problem,) = snapshot.problems
    assert problem.startswith("latin1.txt: not valid UTF-8 (first bad byte at 3, 4 replaced)")
    latin = snapshot.files[1].text
    assert latin.count("\ufffd") == 4 and "R$ 10" in latin
    assert snapshot.files[0].text.startswith("# Com BOM")
    assert sources(kb, "horario abrimos") == ["ok.md"]


def test_a_file_larger_than_the_limit_is_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "enorme.txt").write_text("a" * (MAX_FILE_BYTES + 1), encoding="utf-8")
    (tmp_path / "normal.txt").write_text("Horário: 9h às 18h.", encoding="utf-8")
    snapshot = KnowledgeBase(str(tmp_path)).reload()
    assert [f.path for f in snapshot.files] == ["normal.txt"]
    assert snapshot.problems == (f"enorme.txt: larger than {MAX_FILE_BYTES} bytes, skipped",)


def test_a_missing_folder_is_reported_then_picked_up_when_it_appears(tmp_path: Path) -> None:
    folder = tmp_path / "ainda-nao-existe"
    kb = KnowledgeBase(str(folder))
    snapshot = kb.reload()
    assert snapshot.files == () and "not a folder" in snapshot.problems[0]
    assert kb.context_for([], "qual o horário?") == f"{GROUNDING_RULE}\n\n{HEADER_EMPTY}"
    assert not kb.has_changed()
    folder.mkdir()
    (folder / "horarios.md").write_text("# Horário\nDas 9h às 18h.", encoding="utf-8")
    assert kb.has_changed()
    assert [f.path for f in kb.reload().files] == ["horarios.md"]


# ----- retrieval --------------------------------------------------------------------------------------------


def test_questions_in_natural_pt_br_find_their_file_in_the_top_3(fixture_kb: KnowledgeBase) -> None:
    assert len(RETRIEVAL_CASES) >= 15
    misses = [(q, expected, sources(fixture_kb, q)) for q, expected in RETRIEVAL_CASES]
    misses = [miss for miss in misses if miss[1] not in miss[2]]
    rate = 1 - len(misses) / len(RETRIEVAL_CASES)
    assert rate >= REQUIRED_TOP3_RATE, f"top-3 rate {rate:.0%}; misses: {misses}"


def test_the_best_chunk_is_first_and_carries_the_fact(fixture_kb: KnowledgeBase) -> None:
    (best, *_) = fixture_kb.search("quanto custa o bolo de cenoura?")
    assert best.chunk.source == "produtos/bolos.md"
    assert best.chunk.heading.startswith("Bolos > Bolos caseiros")
    assert "Bolo de cenoura com cobertura de chocolate: R$ 48,00" in best.chunk.text


def test_a_question_the_knowledge_cannot_answer_retrieves_nothing(fixture_kb: KnowledgeBase) -> None:
    assert fixture_kb.search("qual a senha do wifi?") == []
    assert fixture_kb.search("oi, tudo bem?") == []
    assert fixture_kb.search("") == []


def test_the_last_turns_complete_a_vague_burst(fixture_kb: KnowledgeBase) -> None:
    history = [
        Turn(role="user", text="vocês têm torta holandesa?"),
        Turn(role="model", text="Temos sim!"),
    ]
    block = fixture_kb.context_for(history, "e quanto custa?")
    assert "--- fonte: produtos/tortas.md | Tortas doces ---" in block.split(HEADER_RETRIEVED)[1].split("\n\n")[1]
    alone = fixture_kb.context_for([], "e quanto custa?")
    assert "Torta holandesa" not in alone


def test_retrieval_returns_at_most_top_k(fixture_kb: KnowledgeBase) -> None:
    assert len(fixture_kb.search("bolo", 2)) == 2
    assert len(fixture_kb.search("bolo", 100)) <= len(fixture_kb.snapshot.chunks)


# ----- what goes into the prompt ----------------------------------------------------------------------------


def test_a_small_knowledge_base_goes_whole_into_the_prompt() -> None:
    kb = KnowledgeBase(str(FIXTURES), whole_max_chars=30_000)
    kb.reload()
    assert kb.mode == "whole"
    block = kb.context_for([], "qual a senha do wifi?")
    assert block.startswith(GROUNDING_RULE + "\n\n" + HEADER_WHOLE)
    for source in kb.snapshot.files:
        assert f"--- fonte: {source.path} ---\n{source.text}" in block


def test_the_size_threshold_decides_whole_or_retrieval() -> None:
    total = KnowledgeBase(str(FIXTURES)).reload().total_chars
    at_limit = KnowledgeBase(str(FIXTURES), whole_max_chars=total)
    below_limit = KnowledgeBase(str(FIXTURES), whole_max_chars=total - 1)
    at_limit.reload()
    below_limit.reload()
    assert (at_limit.mode, below_limit.mode) == ("whole", "retrieval")
    assert KnowledgeBase("").mode == "off"


def test_a_large_knowledge_base_sends_only_the_retrieved_chunks(fixture_kb: KnowledgeBase) -> None:
    block = fixture_kb.context_for([], "vcs entregam em guarulhos? qual o valor do frete")
    assert block.startswith(GROUNDING_RULE + "\n\n" + HEADER_RETRIEVED)
    assert "--- fonte: entrega/entregas.md | Entregas (delivery) > Onde entregamos e taxa de frete ---" in block
    assert "como Guarulhos, Santo André e Osasco, não entregamos" in block
    assert block.count("--- fonte: ") == 3
    assert "Torta holandesa" not in block


def test_nothing_found_still_sends_the_grounding_rule(fixture_kb: KnowledgeBase) -> None:
    assert fixture_kb.context_for([], "qual a senha do wifi?") == f"{GROUNDING_RULE}\n\n{HEADER_NOTHING_FOUND}"


def test_no_knowledge_dir_means_no_knowledge_block() -> None:
    kb = KnowledgeBase("")
    kb.reload()
    assert not kb.configured
    assert kb.context_for([], "quanto custa?") == ""


def test_grounding_rule_is_pt_br_and_names_the_team() -> None:
    assert "confirmar com a equipe" in GROUNDING_RULE
    assert "Preços" in GROUNDING_RULE and "horários" in GROUNDING_RULE


# ----- reloading --------------------------------------------------------------------------------------------


def test_watcher_picks_up_added_changed_and_removed_files(kb_dir: Path) -> None:
    kb = KnowledgeBase(str(kb_dir), whole_max_chars=0)
    kb.reload()
    watcher = Watcher(kb, interval_seconds=60)
    assert not watcher.check_once()

    (kb_dir / "produtos" / "sorvetes.md").write_text("# Sorvetes\nSorvete de pistache: R$ 19,00.", encoding="utf-8")
    assert watcher.check_once()
    assert sources(kb, "sorvete de pistache", 1) == ["produtos/sorvetes.md"]

    bolos = kb_dir / "produtos" / "bolos.md"
    bolos.write_text(bolos.read_text(encoding="utf-8").replace("R$ 48,00", "R$ 52,00"), encoding="utf-8")
    assert watcher.check_once()
    assert "R$ 52,00" in kb.search("bolo de cenoura", 1)[0].chunk.text

    (kb_dir / "produtos" / "sorvetes.md").unlink()
    assert watcher.check_once()
    assert "produtos/sorvetes.md" not in sources(kb, "sorvete de pistache")
    assert not watcher.check_once()


def test_watcher_thread_reloads_within_the_interval(kb_dir: Path) -> None:
    interval = 0.2
    kb = KnowledgeBase(str(kb_dir), whole_max_chars=0)
    kb.reload()
    watcher = Watcher(kb, interval_seconds=interval)
    watcher.start()
    try:
        (kb_dir / "horarios.md").write_text("# Horário\nAbrimos às segundas das 7h às 22h.", encoding="utf-8")
        took = wait_for(
            lambda: "7h às 22h" in (kb.search("horario segunda", 1) or [None])[0].chunk.text,  # type: ignore[union-attr]
            timeout=interval + 1,
            what="the new hours",
        )
        assert took <= interval + 1
        assert watcher.is_alive()
    finally:
        watcher.stop()
    assert not watcher.is_alive()


def test_watcher_without_auto_reload_ignores_file_changes(kb_dir: Path) -> None:
    kb = KnowledgeBase(str(kb_dir))
    kb.reload()
    (kb_dir / "novo.md").write_text("# Novo\nConteúdo novo.", encoding="utf-8")
    assert not Watcher(kb, interval_seconds=60, watch_files=False).check_once()
    assert "novo.md" not in [f.path for f in kb.snapshot.files]


def test_reload_signal_reaches_every_process(kb_dir: Path, redis_server: RedisServer, redis_client: object) -> None:
    """Two knowledge bases (as in two gunicorn workers) with auto-reload off: asking one to reload reloads both."""
    link_a, link_b = RedisLink(redis_server.url), RedisLink(redis_server.url)
    kb_a, kb_b = KnowledgeBase(str(kb_dir)), KnowledgeBase(str(kb_dir))
    kb_a.reload()
    kb_b.reload()
    watcher_a = Watcher(kb_a, interval_seconds=60, watch_files=False, signal=ReloadSignal(link_a, SIGNAL_KEY))
    watcher_b = Watcher(kb_b, interval_seconds=60, watch_files=False, signal=ReloadSignal(link_b, SIGNAL_KEY))
    assert not watcher_a.check_once() and not watcher_b.check_once()  # first looks: baselines

    (kb_dir / "promocao.md").write_text("# Promoção\nBrigadeiro em dobro na quarta.", encoding="utf-8")
    assert watcher_a.reload_everywhere()
    assert "promocao.md" in [f.path for f in kb_a.snapshot.files]
    assert not watcher_a.check_once()  # the process that was asked is already up to date
    assert "promocao.md" not in [f.path for f in kb_b.snapshot.files]
    assert watcher_b.check_once()
    assert "promocao.md" in [f.path for f in kb_b.snapshot.files]
    assert not watcher_b.check_once()


def test_reload_signal_without_redis_reloads_only_here(kb_dir: Path) -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.2)
    kb = KnowledgeBase(str(kb_dir))
    kb.reload()
    watcher = Watcher(kb, interval_seconds=60, watch_files=False, signal=ReloadSignal(link, SIGNAL_KEY))
    assert not watcher.check_once()
    (kb_dir / "novo.md").write_text("# Novo\nConteúdo novo.", encoding="utf-8")
    assert not watcher.reload_everywhere()
    assert "novo.md" in [f.path for f in kb.snapshot.files]


def test_searches_during_reloads_never_fail(kb_dir: Path) -> None:
    kb = KnowledgeBase(str(kb_dir), whole_max_chars=0)
    kb.reload()
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop() -> None:
        try:
            while not stop.is_set():
                assert kb.search("bolo de cenoura", 3)
                kb.context_for([Turn(role="user", text="oi")], "quanto custa o frete?")
        except BaseException as exc:  # noqa: B036 (collected for the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=search_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(10):
        (kb_dir / f"extra-{n}.md").write_text(f"# Extra {n}\nBolo extra número {n}.", encoding="utf-8")
        kb.reload()
    stop.set()
    for thread in threads:
        thread.join(5)
    assert errors == []
    assert len(kb.snapshot.files) == 33


# ----- the example folder in the repository -----------------------------------------------------------------


def test_the_example_folder_loads_cleanly_and_answers_its_own_questions() -> None:
    kb = KnowledgeBase(str(Path(__file__).resolve().parent.parent / "examples" / "knowledge"), whole_max_chars=0)
    snapshot = kb.reload()
    assert len(snapshot.files) == 5 and snapshot.problems == ()
    assert sources(kb, "qnto fica o banho pra cachorro grande?", 1) == ["produtos/banho-e-tosa.md"]
    assert sources(kb, "racao pra gato castrado", 1) == ["produtos/racoes.md"]
    assert sources(kb, "abre sabado?", 1) == ["horarios-e-endereco.md"]
