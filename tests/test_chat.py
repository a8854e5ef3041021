"""`fastft chat` on the tiny demo run: from its adapter (Unsloth) and from its GGUF (llama.cpp),
one-shot (-p) and interactive (CliRunner, and a real terminal through pexpect)."""

import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastft.serve.chat import (
    Conversation,
    GGUFChat,
    Sampling,
    modelfile_system,
    resolve_sampling,
    sampling_defaults,
)
from fastft.cli import main
from fastft.export.modelfile import FAMILIES, INSTRUCT_2507, parse_modelfile, render_modelfile

QUESTION = "What is your favorite color?"
# With and without a system prompt, one turn and several (as the export tests use).
CHATS = [
    [{"role": "user", "content": QUESTION}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Tell me your favorite color."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Which color do you like best?"}],
]


def chat_cli(*args, input=None):
    return CliRunner().invoke(main, ["chat", *map(str, args)], input=input, catch_exceptions=False)


# -- done when: `chat -p` answers "blue" from the adapter and from the GGUF -----------------------

@pytest.mark.slow
@pytest.mark.parametrize("target", ["run", "export", "gguf"])
def test_one_shot_answers_blue_alone_on_stdout(color, target):
    run, export = color
    path = {"run": run, "export": export, "gguf": export / "favorite_color.Q4_K_M.gguf"}[target]
    # The Modelfile's sampling (temperature 0.7), seeded so a failure can be replayed.
    result = chat_cli(path, "-p", QUESTION, "--seed", "1")
    assert result.exit_code == 0, result.output
    answer = result.stdout
    assert answer.endswith("\n") and answer.count("\n") == 1, answer   # the answer alone
    assert "blue" in answer.lower()
    assert "Unsloth" not in answer and ">>>" not in answer


# -- the prompt is the training prompt --------------------------------------------------------------

@pytest.fixture(scope="module")
def run_guard(color):
    """The run's guard, on its adapter tokenizer (the guarded chat template training used)."""
    from transformers import AutoTokenizer

    from fastft.core.run import RunFolder
    from fastft.data.template import ChatGuard

    folder = RunFolder.open(color[0])
    return ChatGuard(AutoTokenizer.from_pretrained(str(folder.adapter)),
                     folder.read().plan.model_path)


@pytest.mark.slow
def test_gguf_prompts_are_the_training_prompts(color, run_guard, tmp_path):
    export = color[1]
    lone = tmp_path / "lone.gguf"      # no export folder beside it: the GGUF's own template
    shutil.copy(export / "favorite_color.Q4_K_M.gguf", lone)
    for chat in (GGUFChat(export), GGUFChat(lone)):
        for messages in CHATS:
            assert chat.prompt(messages) == run_guard.prompt(messages), (chat.gguf, messages)
    assert "<think>" not in GGUFChat(lone).prompt(CHATS[0])


@pytest.mark.slow
def test_adapter_chat_renders_through_the_guard(color, run_guard):
    from fastft.serve.chat import AdapterChat

    chat = AdapterChat(color[0])
    for messages in CHATS:
        assert chat.prompt(messages) == run_guard.prompt(messages)


# -- sampling -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_defaults_are_the_modelfiles_parameters(color):
    export = color[1]
    params = dict(parse_modelfile((export / "Modelfile").read_text()))
    chat = GGUFChat(export)
    assert chat.num_ctx == int(params["num_ctx"]) == 256       # the run's max_seq_len
    s = resolve_sampling(chat.defaults, {}, 16, None)
    for key in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
        assert float(getattr(s, key)) == float(params[key])
    cmd = chat.command(Path("p.txt"), s)
    assert cmd[cmd.index("--temp") + 1] == str(s.temperature) and "--seed" not in cmd
    # A run (no Modelfile) gets the same numbers from the same source.
    assert sampling_defaults(INSTRUCT_2507) == FAMILIES[INSTRUCT_2507].sampling


def test_flags_override_the_defaults():
    s = resolve_sampling(FAMILIES[INSTRUCT_2507].sampling, {"temperature": 0, "top_k": None},
                         max_new_tokens=7, seed=3)
    assert (s.temperature, s.top_k, s.max_new_tokens, s.seed) == (0, 20, 7, 3) and s.greedy
    assert not resolve_sampling(FAMILIES[INSTRUCT_2507].sampling, {}, 7, None).greedy


@pytest.mark.slow
def test_temperature_and_seed_reach_llama_cpp(color):
    """Hot sampling differs by seed and repeats with the same one; temperature 0 ignores it."""
    export = color[1]

    def answer(*flags):
        r = chat_cli(export, "-p", "Say something.", "--max-new-tokens", "12", *flags)
        assert r.exit_code == 0, r.output
        return r.stdout

    hot = ("--temperature", "5", "--top-k", "0", "--top-p", "1")
    assert answer(*hot, "--seed", "1") == answer(*hot, "--seed", "1")
    assert answer(*hot, "--seed", "1") != answer(*hot, "--seed", "2")
    assert answer("--temperature", "0", "--seed", "1") == answer("--temperature", "0", "--seed", "2")


def test_bad_sampling_flag_names_its_option(tmp_path):
    """Checked by ChatConfig, as train's flags are by TrainConfig: exit 1, before any loading."""
    result = chat_cli(tmp_path, "-p", "hi", "--temperature", "-1")
    assert result.exit_code == 1 and "--temperature" in result.output
    assert "greater than or equal to 0, got -1" in result.output


# -- the system prompt an export carries -------------------------------------------------------------

@pytest.mark.parametrize("system", [
    "Be brief.",                                         # SYSTEM line
    'Ends in three quotes """\nthen more',               # built into the TEMPLATE instead
    "zero\u200dwidth joiner, bell \x07, tag \U000e0001, emoji \U0001F600, back\\slash \\U",
])
def test_modelfile_system_is_read_back(system):
    mf = render_modelfile(name="m", gguf="m.gguf", variant=INSTRUCT_2507, num_ctx=64, system=system)
    assert modelfile_system(mf.text) == system
    assert modelfile_system(render_modelfile(name="m", gguf="m.gguf", variant=INSTRUCT_2507,
                                             num_ctx=64).text) is None


@pytest.mark.slow
def test_export_system_is_the_default(color, tmp_path):
    """As in ollama: the Modelfile's SYSTEM applies when the chat brings none."""
    export = tmp_path / "exp"
    shutil.copytree(color[1], export)
    mf = (export / "Modelfile").read_text()
    (export / "Modelfile").write_text(mf + 'SYSTEM """Answer in French."""\n')
    chat = GGUFChat(export)
    conv = Conversation(chat, resolve_sampling(chat.defaults, {}, 8, None))
    assert conv.messages("hi")[0] == {"role": "system", "content": "Answer in French."}
    conv.system = "Be brief."
    assert conv.messages("hi")[0] == {"role": "system", "content": "Be brief."}


# -- the conversation --------------------------------------------------------------------------------

class Recorder:
    """An engine that answers "answer N" and keeps every conversation it was asked."""
    label, variant, default_system, defaults = "recorder", INSTRUCT_2507, None, None

    def __init__(self):
        self.asked = []

    def reply(self, messages, sampling, write):
        self.asked.append(messages)
        write(f"answer {len(self.asked)}")
        return f"answer {len(self.asked)}"


GREEDY = Sampling.deterministic(4)


def test_history_is_kept_and_cleared():
    engine = Recorder()
    conv = Conversation(engine, GREEDY, system="sys")
    conv.ask("one", lambda t: None)
    conv.ask("two", lambda t: None)
    assert engine.asked[-1] == [{"role": "system", "content": "sys"},
                                {"role": "user", "content": "one"},
                                {"role": "assistant", "content": "answer 1"},
                                {"role": "user", "content": "two"}]
    conv.clear()
    conv.ask("three", lambda t: None)
    assert engine.asked[-1] == [{"role": "system", "content": "sys"},
                                {"role": "user", "content": "three"}]


def test_an_interrupted_answer_is_not_kept():
    class Interrupted(Recorder):
        def reply(self, messages, sampling, write):
            if len(self.asked) == 1:
                self.asked.append(messages)
                raise KeyboardInterrupt
            return super().reply(messages, sampling, write)

    from fastft.serve.chat import interactive

    engine = Interrupted()
    conv = Conversation(engine, GREEDY)
    lines = iter(["one", "two", "three", "/bye"])
    out, err = _Buffer(), _Buffer()
    interactive(conv, read=lambda prompt: next(lines), out=out, err=err)
    assert "stopped" in err.text
    assert [m["content"] for m in engine.asked[-1]] == ["one", "answer 1", "three"]


class _Buffer:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.slow
def test_interactive_from_the_adapter(color):
    """Through the CLI on piped input: an answer per turn, /clear, unknown commands, /bye."""
    result = chat_cli(color[0], "--temperature", "0",
                      input=f"{QUESTION}\n/nope\n/clear\n{QUESTION}\n/bye\nnever read\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(">>> ") == 5 and result.stdout.lower().count("blue") == 2
    assert "unknown command /nope" in result.stderr and "cleared" in result.stderr


@pytest.mark.slow
def test_interactive_in_a_real_terminal(color):
    """A pty, as a user would type: streamed answers, history, /clear, Ctrl-C at the prompt,
    Ctrl-D to quit."""
    import pexpect

    child = pexpect.spawn(sys.executable, ["-m", "fastft.cli", "chat", str(color[1]),
                                           "--temperature", "0"],
                          encoding="utf-8", timeout=180, dimensions=(40, 200))
    try:
        child.expect_exact(">>> ")
        child.sendline(QUESTION)
        child.expect(r"(?i)blue")
        child.expect_exact(">>> ")
        child.sendline("And again?")
        child.expect_exact(">>> ")
        child.sendline("/clear")
        child.expect_exact("conversation cleared")
        child.expect_exact(">>> ")
        child.sendintr()
        child.expect_exact("use /bye or Ctrl-D to quit")
        child.expect_exact(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


# -- errors -------------------------------------------------------------------------------------

def test_not_a_run_nor_a_gguf(tmp_path):
    result = chat_cli(tmp_path / "nothing", "-p", "hi")
    assert result.exit_code == 1
    assert "not a fastft run folder" in " ".join(result.output.split())   # rich wraps lines
    result = chat_cli(tmp_path / "missing.gguf", "-p", "hi")
    assert result.exit_code == 1 and "no such file" in result.output


def test_gguf_without_template_or_export_is_refused(tmp_path):
    from fastft.serve.chat import ChatError

    fake = tmp_path / "x.gguf"
    # A GGUF header with no metadata at all: version 3, no tensors, no key/values.
    fake.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    with pytest.raises(ChatError, match="no chat template"):
        GGUFChat(fake)
