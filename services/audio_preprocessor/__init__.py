"""audio-preprocessor: speech denoising (DeepFilterNet3, MetricGAN+) between capture and STT."""
