"""Evaluation protocols on frozen or fine-tuned encoders (PAPER.md, "Evaluation protocols")."""
