"""The compiler: graph -> diagnostics and shapes -> PyTorch source. Pure functions only."""

from compiler.analysis import Analysis, Diagnostic, NodeInfo, analyse
from compiler.codegen import generate_source

__all__ = ["Analysis", "Diagnostic", "NodeInfo", "analyse", "generate_source"]
