"""Performance indicators, victim surveys and trial evaluation: the figures that show
whether EVR responds faster and better (the contract's "Performance indicators and
evaluation")."""
