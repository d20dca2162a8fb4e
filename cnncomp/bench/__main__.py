"""`python -m cnncomp.bench`."""

from cnncomp.bench import main

main()
