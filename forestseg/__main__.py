"""`python -m forestseg`: the `forestseg` command run by an interpreter named, e.g. `.venv/bin/python -m forestseg`."""

from forestseg.console import main

main()
