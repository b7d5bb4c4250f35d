"""Plumbing every other layer of moda builds on: reading images, writing files whole and inside their folder, one run
at a time per output, JSON Lines / CSV / settings files, and how a command reports an input error.

Nothing here imports another moda layer (the contract in .importlinter says so).
"""
