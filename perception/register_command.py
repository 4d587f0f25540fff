"""`nearfield register-model --replace`: perception/cli.py registers the command; this adds the choice to replace a
name the manifest has already (refused otherwise, perception.registry.register_trained) and says when --manifest
named a manifest that did not exist yet. Kept apart so that the flag lands without touching perception/cli.py while
another change is under way there; it belongs in that file's register-model parser."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    r = commands.choices.get("register-model")
    if r is None or "--replace" in r._option_string_actions:  # not there, or perception/cli.py has the flag itself
        return
    r.add_argument("--replace", action="store_true",
                   help="replace the entry of that name if there is one (its data text, val mIoU and sha256 are "
                        "dropped; `nearfield zoo rename OLD NEW --with-trained` keeps it instead)")
    r.set_defaults(func=_register_model)


def _register_model(args) -> int:
    from perception.registry import MANIFEST, register_trained

    manifest = Path(args.manifest or MANIFEST)
    created = not manifest.exists()
    entry = register_trained(args.run_dir, args.name, args.data, manifest, args.dtype, stem=args.file,
                             checkpoint=args.checkpoint, replace=args.replace)
    if created:
        print(f"{manifest}: no such manifest, a new one was created")
    miou = "–" if entry.val_miou is None else f"{100 * entry.val_miou:.1f}%"
    print(f"{manifest}: {entry.name} -> {entry.weights.name} ({entry.dtype}, sha256 {entry.sha256[:16]}..., "
          f"val mIoU {miou})")
    return 0
