"""What the tests build and share, one module per thing built (imported as `tests.helpers.<module>`).

- trigger_run: the synthetic trigger-word run (latent i fires on one word) of the interpret/score tests.
- report_run: the report's synthetic run (Zipf token store, brute-force statistics, logs to render).
- run_files: the parts both runs write the same way, and readers of a run's logs keyed by latent.
- scripted_llm: scripted LLM replies (an explainer, a judge) that answer from the trigger run's rule.
- fuzz_inputs: hypothesis strategies and settings of the fuzz tests, and the scored item they fuzz against.
- report_pages: a tiny DOM of the report's HTML and the index page's meta data.
- triton_kernels: the kernel tests' setup (TRITON_INTERPRET without CUDA) and dense references.
- chromium: headless chromium (Playwright) and engine.serve on a thread, for the browser tests.

A test module imports from here, never from another test module.
"""
