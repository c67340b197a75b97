"""``backstage shell``: the CLI's verbs at a prompt, with history and tab completion.

The shell runs each line through the ``run`` function it is given (``cli.run``): it does not
import the command line module, which imports it.
"""

from __future__ import annotations

import cmd
import contextlib
import json
import shlex
from collections.abc import Callable
from typing import Any

import click

from . import _daemon, _security

__all__ = ["Shell"]


#: Runs one command line in a session and returns its exit code (``cli.run``).
Runner = Callable[[list[str], Any], int]


class Shell(cmd.Cmd):
    """The prompt of ``backstage shell``: one verb per line, against one daemon."""

    intro = "backstage shell: the same verbs as the command line (help, tree, send ..., exit)."
    prompt = "backstage> "

    def __init__(
        self,
        run: Runner,
        group: click.Group,
        session: Any,
        port: int,
        as_json: bool = False,
        host: str = _daemon.LOCAL,
    ) -> None:
        super().__init__()
        self.run = run
        self.group = group
        self.session = session
        self.port = port
        self.host = host
        self.as_json = as_json  # every verb that has --json gets it
        if as_json:
            self.intro = ""  # stdout carries JSON only (and the prompts)
        self.history = _daemon.home() / "shell_history"
        self.readline: Any = None
        with contextlib.suppress(ImportError):
            # Optional: not every Python is built with readline; the shell works without it.
            import readline

            self.readline = readline
            with contextlib.suppress(OSError):
                readline.read_history_file(self.history)

    def cmdloop(self, intro: Any = None) -> None:
        """Read lines until ``exit`` or end of input; Ctrl-C abandons the line (or the verb
        running) and shows a fresh prompt, as in a shell."""
        while True:
            try:
                super().cmdloop(intro)
                return
            except KeyboardInterrupt:
                click.echo("^C")
                intro = ""  # the banner once

    # -- running verbs ----------------------------------------------------------------------

    def default(self, line: str) -> bool:  # type: ignore[override]  # True ends cmdloop
        try:
            args = self.split(line)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            return False
        if args and args[0] in ("exit", "quit"):
            return True
        if args and args[0] in ("start", "shell"):
            click.echo(f"error: {args[0]} is not available inside the shell", err=True)
            return False
        verb = self.group.commands.get(args[0]) if args else None
        if verb is not None and "--port" not in args:
            args += ["--port", str(self.port)]
        if verb is not None and "--host" not in args and verb.name != "start":
            args += ["--host", self.host]
        if verb is not None and self.as_json and "--json" not in args and _has_json(verb):
            args.append("--json")
        code = self.run(args, self.session)
        # A stop that stopped the daemon ends the shell; `stop --help` or a failed stop do not.
        return args[:1] == ["stop"] and code == 0 and not {"-h", "--help"} & set(args)

    @staticmethod
    def split(line: str) -> list[str]:
        """Shell words; in ``send NAME {...}`` the JSON object may be typed without quotes."""
        head = line.split(maxsplit=2)
        if len(head) == 3 and head[0] == "send" and head[2].lstrip().startswith("{"):
            rest = head[2].lstrip()
            try:
                _, end = json.JSONDecoder().raw_decode(rest)
            except ValueError:
                end = len(rest)  # let `send` report the JSON error with its position
            return ["send", head[1], rest[:end], *shlex.split(rest[end:])]
        return shlex.split(line)

    def do_help(self, arg: str) -> None:
        """``help`` lists the verbs; ``help VERB`` shows the verb's options."""
        self.run([arg, "--help"] if arg else ["--help"], self.session)

    def do_EOF(self, arg: str) -> bool:  # cmd's name for end of input
        click.echo()
        return True

    def emptyline(self) -> bool:
        return False

    def postloop(self) -> None:
        if self.readline is not None:
            with contextlib.suppress(OSError):
                self.readline.set_history_length(1000)
                _security.create_private(self.history)  # 0600 before readline writes it
                self.readline.write_history_file(self.history)

    # -- completion -------------------------------------------------------------------------

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        verbs = [*self.group.commands, "exit", "help"]
        return sorted(v for v in verbs if v.startswith(text))

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line.split()
        if (
            words
            and words[0] == "send"
            and (len(words) == 1 or (len(words) == 2 and not line.endswith(" ")))
        ):
            return sorted(n for n in self.command_names() if n.startswith(text))
        if words and words[0] == "rebuild":
            return sorted(n for n in self.projection_names() if n.startswith(text))
        return []

    def command_names(self) -> list[str]:
        try:
            app, _ = self.session.system(self.port, host=self.host)
        except click.ClickException:
            return []
        return [cls.__name__ for cls in app.router.routes]

    def projection_names(self) -> list[str]:
        try:
            app, _ = self.session.system(self.port, host=self.host)
        except click.ClickException:
            return []
        return [p.subscriber_name() for p in app.projections]


def _has_json(verb: click.Command) -> bool:
    return any("--json" in getattr(param, "opts", ()) for param in verb.params)
