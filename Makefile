# tandem: `make run` and `make test` install everything they need first.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
export MUJOCO_GL ?= osmesa
export PYOPENGL_PLATFORM ?= osmesa

.PHONY: help install run test test-full bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(STAMP)  ## create .venv and install tandem with pinned dependencies (and system packages)

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	./scripts/install.sh
	@touch $(STAMP)

# The default post-training session: the shipped tiny VLA on the MetaWorld suite (training scenes), the edit
# head, the human-like scripted operator and a learner on localhost; every 10 training episodes 6 autonomous
# episodes on unseen scenes (no operator). Ends with "autonomous success X on unseen scenes | operator share Y
# | assisted success Z"; runs/<date>/report.md has both curves.
RUN_ARGS ?= head=edit teleop=human learn.spawn=true session.episodes=30 link.learner_updates_per_episode=100 \
	session.eval_every=10 session.eval_episodes=6

run: install  ## run a simulated post-training session end to end on CPU (RUN_ARGS=... to change it)
	$(BIN)/tandem run $(RUN_ARGS)

test: install  ## run the fast test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-full: install  ## run every test, the slow ones too
	$(BIN)/python -m pytest -q -m "not manual"

bench: install  ## run the performance benchmarks (JSON out, a few minutes)
	$(BIN)/tandem bench loop --hz 50 --seconds 10 --load 1
	$(BIN)/tandem bench loop --hz 200 --seconds 10 --load 1
	$(BIN)/tandem bench inference --seconds 20
	$(BIN)/tandem bench recorder --seconds 60
	$(BIN)/tandem bench links --pushes 100 --records 20000
	$(BIN)/tandem bench learner

lint: install  ## ruff
	$(BIN)/ruff check .

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
