"""Rename the keys of an official backbone release to rayseg's (MMSeg's ``tools/model_converters/``):
``python jobs/convert_weights.py KIND SRC DST``.

KIND is one of mit, swin, vit, beit, stdc1, stdc2 (``rayseg.models.converters`` lists the releases). SRC is a
local file, a URL or a storage URI, read with rayseg's safe checkpoint reader; its tensors may sit under
``state_dict``, ``model`` or at the top. DST receives the renamed state dict (``torch.save``, as MMSeg's scripts
write it), ready for a backbone's ``pretrained`` / ``init_cfg: {type: Pretrained, checkpoint: DST}``.
"""
import argparse
import os
import sys

import _preflight  # noqa: E402,F401  (first: a python without rayseg's dependencies says so in one line)

from rayseg.errors import CheckpointError, ConfigError
from rayseg.models.converters import CONVERTERS, convert_state_dict


def main(argv=None) -> int:
    """Parse arguments, read SRC, convert, write DST; exit status 2 with one ``error:`` line on a user error."""
    import torch

    from rayseg.engine.checkpoint import read_checkpoint
    from rayseg.models.pretrained import extract_state_dict

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", metavar="KIND", help=f"the release: {', '.join(CONVERTERS)}")
    parser.add_argument("src", metavar="SRC", help="the official checkpoint (path, URL or storage URI)")
    parser.add_argument("dst", metavar="DST", help="where to write the converted state dict")
    args = parser.parse_args(argv)
    try:
        if args.kind.lower() not in CONVERTERS:
            raise ConfigError(f"unknown KIND {args.kind!r}; use one of {', '.join(CONVERTERS)}")
        state = extract_state_dict(read_checkpoint(args.src), args.src)
        converted = convert_state_dict(args.kind, state)
        folder = os.path.dirname(os.path.abspath(args.dst))
        os.makedirs(folder, exist_ok=True)
        torch.save(converted, args.dst)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {args.src}: {exc}" if not str(exc).startswith(str(args.src)) else f"error: {exc}",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.dst}: {exc}", file=sys.stderr)
        return 2
    print(f"converted {len(state)} {args.kind} keys into {len(converted)}; wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
