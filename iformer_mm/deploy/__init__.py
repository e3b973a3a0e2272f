"""Deployment: Core ML / ONNX / ExecuTorch export, op census and the
latency benchmark.

Modules (import them directly; nothing heavy is imported here):

* :mod:`.backbones` resolves iFormer archs, configs and OpenMMLab peers;
* :mod:`.export` prepares (BN folding) and exports with torch.export / ONNX;
* :mod:`.coreml` converts to an ML program, saves and reads packages;
* :mod:`.census` reads a converted program: its op census and the check of
  a saved package;
* :mod:`.latency` times callables and the CPU proxies;
* :mod:`.executorch` exports an ExecuTorch program (.pte; XNNPACK or Core
  ML delegate), checks it against PyTorch and times it with the runtime;
* :mod:`.macos` times a package on macOS and reads its op placement;
* :mod:`.report` writes the markdown, JSON and chart;
* :mod:`.predictor` predicts the iPhone 13 latency of a converted program;
* :mod:`.benchmark` runs it all (``tools/benchmark_latency.py``).
"""
