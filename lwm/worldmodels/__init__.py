"""The World Models pipeline of Ha & Schmidhuber (arXiv 1803.10122) in JAX / Flax NNX.

Modules, in the order data flows through them:
- `config`: the typed config of every stage (`WorldModelsConfig`).
- `envs`: CarRacing-v3 and VizDoom TakeCover through gymnasium (plus cheap fakes), frame
  preprocessing, action mapping and the random data-collection policies.
- `rollouts`: parallel, resumable collection into one compressed `.npz` per episode.
- `vae`: V, the ConvVAE; its training and batched encoding.
- `mdnrnn`: M, the LSTM with a mixture-density head; NLL, temperature sampling, training.
- `controller`: C, the linear controller, and lockstep evaluation in real environments.
- `cmaes`: the CMA-ES loop (pycma) with logging, checkpoint evaluation and resume.
- `dream`: C evolved inside M, a whole population per jitted call.
- `checkpoint`: parameter files (`.npz` + JSON sidecar).
- `pipeline`: the stages as library calls; `pictures`: PNG/GIF output.

Importing this package loads no JAX; each module imports what it needs.
"""
