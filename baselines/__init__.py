"""Reference optimisers that learned ones are judged against (hand-designed, BPTT, SB3 agents)."""
