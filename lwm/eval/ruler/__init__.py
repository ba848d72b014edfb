"""RULER's long-context task suite (arXiv 2404.06654): generators, scoring, reports, runner.

- `haystacks`: noise, essays, values (numbers, words, UUIDs), pseudo- and coded words.
- `prompts`: prompt assembly in the model's tokens and the binary search that fits a length.
- `tasks`: the 13 tasks (`TASKS`) and `make_item`.
- `qa`: SQuAD / HotpotQA files for `qa_1` / `qa_2`.
- `scoring`: `string_match_all` / `string_match_part`.
- `report`: the task x length table with RULER's averages, heatmaps.
- `runner`: `run_ruler`, resumable results.
"""
