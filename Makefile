# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
# The virtual environment is (re)built when requirements.txt or setup.py change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ROS 2 traffic of the project's commands stays on this host.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_LOCALHOST_ONLY ?= 1
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: setup demo test lint

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

## The main job: the simulated robot driven through the ROS 2 node graph by the shipped
## policy (checkpoints/default), one episode of each task family.
demo: $(STAMP)
	$(BIN)/vla-align up config/sim_graph.yaml --episodes 5 --timeout 300

## The whole test suite (CI runs exactly this).
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
