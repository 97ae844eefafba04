"""The embedded demo: five synthetic domains, the tiny from-scratch base, the build and its evidence.

    from training.demo.sampling import DOMAINS, generate, write_demo_data
    from training.demo.answers import check_answer
    rows = generate("math", "test", n=50, seed=0)           # chat rows from held-out templates only
    paths = write_demo_data("out/demo_data", tokenizer)       # <out>/<domain>/{train,valid,test}.jsonl
    check_answer("math", model_completion, rows[0]["answer"])

Every row is a chat exchange ("messages" format) with its "template", except that 30% of the math, medical and
reasoning *training* rows are raw completions ({"prompt", "completion"}); those three domains' train and valid files
are written as "prompt_completion", their chat rows rendered by the base's `tokenizer`. Math, medical, reasoning and
chat rows carry "answer", code rows "tests" and "entry". Train rows come from training templates only; valid and
test rows from the held-out templates (the last phrasing of every kind): see `training.demo.sampling`. The map of
this folder is in training/README.md.
"""
