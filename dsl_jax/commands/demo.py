"""``dsl-jax demo``: the whole pipeline at small scale, on any machine, in minutes.

Prints the report (``OUT/report.md``) when done. The stages and what each writes:
dsl_jax/demo.py.
"""

from __future__ import annotations

import os
import sys
import time
from dsl_jax.commands import add_command


def register(sub):
    from dsl_jax import demo

    p = add_command(sub, "demo", demo.__doc__)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo); "
                   "running again with the same directory resumes")
    p.add_argument("--profile", default="default", choices=sorted(demo.PROFILES),
                   help="default: the README's demo (within 10 minutes on 2 CPU cores); full: "
                        "a larger model (d_model 256, 6 layers) trained longer (about 1 h 40 min "
                        "on 2 CPU cores); "
                        "quick: a reduced run that checks the pipeline end to end (CI)")
    p.add_argument("--restart", action="store_true",
                   help="forget finished stages in --out and run everything again")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsl_jax import demo

    t0 = time.time()
    print(demo.run_demo(args.out, demo.PROFILES[args.profile], args.restart))
    print(f"[demo] finished in {time.time() - t0:.0f} s; report: "
          f"{os.path.join(os.path.abspath(args.out), 'report.md')}", file=sys.stderr)
    return 0
