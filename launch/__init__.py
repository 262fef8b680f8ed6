"""Sweeps of the paper's ablation tables, and scripts to launch on GPU clusters and TPU pods."""
