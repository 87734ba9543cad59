"""Tools a model calls while it decodes (Toolformer, Schick et al. 2023): each a named
text-to-text function behind limits. A call is text an untrusted model wrote, so nothing
here evaluates it in t5pt's own process: the calculator parses arithmetic with a safe
evaluator, and model-written code runs only in the sandbox's separate, walled process.

  base        the Tool interface, its limits, and running one call into a bounded result
  syntax      finding, parsing and rendering calls in text ([Name(args) -> result])
  calculator  arithmetic (simpleeval), Toolformer's conventions
  sandbox     a separate process behind OS walls; the `python` tool runs code in it
  retrieval   BM25 over a local corpus (bm25s)
  calendar    today's date in Toolformer's wording
  registry    the tools as gin names them (TOOLS = {'Calculator': @tools.calculator(), ...})
              and the start-up check of a TOOLS binding

Imports only t5pt.runtime.
"""
