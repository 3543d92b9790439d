"""Training as in the paper's appendix A: prompt simulation, losses, optimiser and trainer."""
