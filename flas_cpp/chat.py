"""`flas-chat`: a streaming, multi-turn chat REPL with live steering controls."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TextIO

from ._native import core
from .bundled import add_model_args, check_model_args, chosen_models
from .devices import add_device_args, device_kwargs
from .model import FlasModel

HELP = """commands:
  /concept <text>   steer toward a concept (steering turns on)
  /flowtime <T>     steering strength (0 = none, 2 = the paper's default)
  /steps <n>        Euler steps N (1..64)
  /temp <t>         sampling temperature (0 = greedy)
  /off, /on         steering off / back on (concept and strength are kept)
  /compare <msg>    answer <msg> alone (without the conversation), unsteered and steered,
                    side by side; not added to the history
  /reset            forget the conversation
  /status           show the settings
  /help             this text
  /quit             leave (or Ctrl-D); Ctrl-C stops the current reply"""


class ChatSession:
    """The REPL's state and commands, independent of the terminal (so it can be tested)."""

    def __init__(self, model: FlasModel, concept: str | None, flowtime: float, n_steps: int | None,
                 temperature: float, max_tokens: int, seed: int, write: Callable[[str], None]):
        self.model, self.write = model, write
        self.concept, self.flowtime, self.n_steps = concept, flowtime, n_steps
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.enabled = concept is not None
        self.history: list[dict] = []
        # A pretrained base goes on past its answer with an instruction of its own (docs/PROMPTS.md)
        self.stop = ["### Instruction:"] if model.flow_info["prompt_format"] == "alpaca" else None

    # ---- settings -----------------------------------------------------------------------------
    def steering(self) -> tuple[str | None, float]:
        if self.enabled and self.concept and self.flowtime > 0:
            return self.concept, self.flowtime
        return None, 0.0

    def status(self) -> str:
        state = "on" if self.steering()[0] else "off"
        steps = self.n_steps or self.model.flow_info["n_steps"]
        return (f"steering {state} | concept: {self.concept!r} | flowtime: {self.flowtime:g} | steps: {steps} | "
                f"temp: {self.temperature:g} | turns: {len(self.history) // 2}")

    def command(self, line: str) -> bool:
        """Run one /command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        try:
            if name in ("quit", "exit", "q"):
                return False
            elif name == "help":
                self.write(HELP + "\n")
            elif name == "concept":
                if not arg:
                    raise ValueError("usage: /concept <text>, e.g. /concept Talk like a pirate")
                self.concept, self.enabled = arg, True
                self.write(f"concept: {arg}\n")
            elif name == "flowtime":
                value = float(arg)
                core().check_steering("a concept", value, 1)  # flowtime's rule alone (/concept may come later)
                self.flowtime = value
                self.write(f"flowtime: {value:g}\n")
            elif name == "steps":
                value = int(arg)
                core().check_steering("", 0.0, value)  # n_steps' rule alone
                self.n_steps = value
                self.write(f"steps: {value}\n")
            elif name == "temp":
                value = float(arg)
                probe = core().Request()  # an unsteered request with this temperature: the core's rule
                probe.flowtime, probe.sampling.temperature = 0.0, value
                core().check_request(probe)
                self.temperature = value
                self.write(f"temperature: {value:g}\n")
            elif name == "off":
                self.enabled = False
                self.write("steering off\n")
            elif name == "on":
                self.enabled = True
                self.write("steering on\n" if self.concept else "steering on, but no concept yet: /concept <text>\n")
            elif name == "reset":
                self.history.clear()
                self.write("conversation cleared\n")
            elif name == "status":
                self.write(self.status() + "\n")
            elif name == "compare":
                if not arg:
                    raise ValueError("usage: /compare <message>")
                self.compare(arg)
            else:
                self.write(f"unknown command /{name}; /help lists them\n")
        except ValueError as e:
            self.write(f"error: {e}\n")
        return True

    # ---- replies --------------------------------------------------------------------------------
    def _kwargs(self) -> dict:
        return dict(n_steps=self.n_steps, max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed,
                    stop=self.stop)

    def reply(self, message: str) -> None:
        """Stream the answer to `message`; Ctrl-C stops it and keeps what was said. An error is
        printed and leaves the conversation as it was."""
        concept, flowtime = self.steering()
        messages = self.history + [{"role": "user", "content": message}]
        pieces: list[str] = []
        try:
            stream = self.model.stream(messages=messages, concept=concept, flowtime=flowtime, **self._kwargs())
        except ValueError as e:  # refused before it ran: a prompt too long, a conversation the format cannot say
            self.write(f"error: {e}" + (" (/reset starts a new conversation)\n" if "context" in str(e) else "\n"))
            return
        try:
            for piece in stream:
                pieces.append(piece)
                self.write(piece)
        except KeyboardInterrupt:
            self.write(" [stopped]")
        finally:
            stream.close()
        self.write("\n")
        # stripped as chat templates strip a message (the alpaca form adds its own blank line)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": "".join(pieces).strip()}]

    def compare(self, message: str) -> None:
        """The message alone, unsteered and steered: what the concept does, apart from the conversation."""
        concept, flowtime = self.concept, self.flowtime if self.flowtime > 0 else 2.0
        if not concept:
            raise ValueError("set a concept first: /concept <text>")
        base, steered = self.model.compare(messages=[{"role": "user", "content": message}], concept=concept,
                                           flowtime=flowtime, **self._kwargs())
        self.write(f"[baseline] {base.text}\n[steered: {concept}, T={flowtime:g}] {steered.text}\n")


def run_repl(session: ChatSession, stdin: TextIO = sys.stdin) -> None:
    session.write("flas-chat: type a message, or /help for commands.\n" + session.status() + "\n")
    while True:
        try:
            session.write("you> ")
            line = stdin.readline()
        except KeyboardInterrupt:
            session.write("\n(/quit or Ctrl-D to leave)\n")
            continue
        if not line:  # EOF
            session.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not session.command(line):
                    return
                continue
            session.write("model> ")
            session.reply(line)
        except Exception as e:  # noqa: BLE001 (a REPL prints what went wrong and goes on)
            session.write(f"\nerror: {type(e).__name__}: {e}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flas-chat", description="Chat with a FLAS-steered model (Gemma-2, Gemma-3, "
                                 "Qwen3, Llama), streaming and multi-turn; the demo model unless told otherwise.")
    add_model_args(ap)
    ap.add_argument("--concept", help="concept to steer toward, e.g. \"Talk like a pirate\"")
    ap.add_argument("--flowtime", type=float, default=2.0, help="steering strength T (default 2.0)")
    ap.add_argument("--n-steps", type=int, help="Euler steps N (default: the flow's)")
    ap.add_argument("--temp", type=float, default=0.7, help="sampling temperature (default 0.7)")
    ap.add_argument("--max-tokens", type=int, default=256, help="longest reply (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, help="CPU threads (default: one per physical core)")
    add_device_args(ap)
    a = ap.parse_args(argv)
    check_model_args(a, ap.error)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        base, flow = chosen_models(a)
        model = FlasModel(base, flow, n_ctx=a.n_ctx, n_threads=a.threads, **device_kwargs(a))
        session = ChatSession(model, a.concept, a.flowtime, a.n_steps, a.temp, a.max_tokens, a.seed, write)
    except (ValueError, RuntimeError) as e:
        print(f"flas-chat: error: {e}", file=sys.stderr)
        return 2
    info = model.flow_info
    write(f"base: {base} ({model.family})\nflow: {flow} (layer {info['layer']}, prompt format {info['prompt_format']})\n")
    if not a.base and not a.hf:
        write("(the demo model has random weights: its text is noise)\n" if not a.real else
              "(Gemma-3 270M is a real pretrained base; its flow has random weights: steering at work, no trained "
              "concept)\n")
    run_repl(session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
