"""Classify reviews or tag sentences with a trained checkpoint: one line each (label, probability, text; or word/TAG).

    python src/predict.py ckpt_path=... text="A wonderful, moving film."
    python src/predict.py ckpt_path=... file=reviews.txt      # one review per line

Start-up is most of a one-sentence run, so this imports neither Lightning nor the training pipeline
(bertgpt.inference), and composes conf/predict.yaml with Hydra's compose API: the same `key=value` overrides,
without a run folder or log file. A Hydra flag (--help, --cfg job, ...) runs the full `hydra.main`.
"""

import sys

from bertgpt.cli import compose, exit_on_user_error, verbatim_text_argument


def main(overrides: list[str]) -> None:
    from bertgpt.host import keep_freed_memory
    from bertgpt.inference import predict

    keep_freed_memory()
    exit_on_user_error(lambda: predict(compose("predict", overrides)))


def hydra_main() -> None:
    import hydra

    from bertgpt.cli import cli
    from bertgpt.inference import predict

    @hydra.main(version_base="1.3", config_path="../conf", config_name="predict.yaml")
    @cli
    def run(cfg):
        predict(cfg)

    run()


if __name__ == "__main__":
    sys.argv = verbatim_text_argument(sys.argv)
    if any(arg.startswith("-") for arg in sys.argv[1:]):
        hydra_main()
    else:
        main(sys.argv[1:])
