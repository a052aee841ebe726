"""The embedded default dataset: tracers of gravitational free-fall collapse integrated with the
default demonstration network by
`python -m astrochem_jax.generate --config=configs/datasets/grav.py`.

Sections: identity + raw file (used by every stage), `generator` (ground truth, used by generate),
and the preprocessing fields (used by preprocess).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    c = ConfigDict()
    # --- identity and raw file ---------------------------------------------------------------
    c.name = "grav"
    c.raw_path = "data/raw/grav.h5"  # relative paths are relative to the working directory
    c.format = "astrochem_jax"  # reader: astrochem_jax | uclchem | carbox
    c.key = ""  # HDF5 key / group (UCLCHEM pandas: "df"; Carbox: "large" or "small")
    # 256 tracers: 180 train / 38 val / 38 test. Test tracers are closer to a training tracer
    # the more there are (mean |dlog10| to the nearest one: 0.24 / 0.17 / 0.15 / 0.11 dex with
    # 22 / 45 / 90 / 180 train tracers), and the surrogate's tail follows: closed-loop p99
    # 0.49-0.54 dex over 5 seeds with 180, 0.51-0.72 with 90. With 64 tracers (44 train) C was
    # off by 5 dex on late full collapses. The component configs' `max_train_examples` keep the
    # optimizer steps of 90 train tracers, so training costs the same.
    c.n_tracers = 256
    c.n_steps = 300
    c.seed = 42

    # --- ground truth generator (owned by astrochem_jax.generate) -------------------------------
    c.generator = g = ConfigDict()
    # "default", a UMIST-format .rates path, or a UCLCHEM reactions .csv path (+ its species CSV)
    g.network = "default"
    g.network_species_csv = config_dict.placeholder(str)  # UCLCHEM networks only
    g.network_gas_phase = False  # keep only the gas-phase subset of the network
    # Initial abundances: UCLCHEM-like dark-cloud defaults (chemistry/initial_abundances.py), H
    # atomic instead of molecular with atomic_hydrogen, or a full {species: x/H} mapping.
    g.atomic_hydrogen = False
    g.initial_abundances = config_dict.placeholder(dict)
    # Output times: n_steps points, t = 0 first (row 0 = initial abundances). 1.5 Myr as in the
    # real UCLCHEM collapse runs: with the ranges below free-fall times are 0.16-3.1 Myr, so some
    # tracers reach their final density early, some mid-way and the slowest barely collapse.
    g.time_end_years = 1.5e6
    g.time_spacing = "linear"  # "linear" | "log" (t = 0, then log-spaced from log_first_time_years)
    g.log_first_time_years = 1.0e2
    # User tracks instead of collapse tracks: CSV with tracer, time, density, gasTemp, Av,
    # Radfield (+ zeta); see chemistry/tracks.py::read_tracks_csv.
    g.tracks_csv = config_dict.placeholder(str)
    g.csv_default_zeta = 1.0  # zeta (1.3e-17 s^-1) for CSV tracks without a zeta column
    # Free-fall collapse parameters, drawn per tracer by Latin hypercube, uniform in log10 over
    # (lo, hi); lo == hi fixes a value. Names: chemistry/tracks.py::TRACK_PARAMETERS.
    g.track_ranges = ConfigDict()
    g.track_ranges.initial_density_cm3 = (3.0e3, 1.0e5)
    g.track_ranges.final_density_cm3 = (1.0e6, 1.0e7)  # cap of the collapse
    g.track_ranges.freefall_factor = (0.3, 1.0)  # 1 = pure free fall, < 1 = retarded
    g.track_ranges.gas_temperature_K = (10.0, 30.0)
    g.track_ranges.radfield_habing = (0.1, 10.0)
    g.track_ranges.zeta = (0.5, 3.2)  # units of 1.3e-17 s^-1
    g.track_ranges.base_av_mag = (0.5, 3.2)  # Av at the cloud edge, added to the column's Av
    g.track_ranges.cloud_radius_pc = (0.05, 0.05)  # initial radius r0 (UCLCHEM's rout)
    # Stiff solver (chemistry/solver.py::SolverSettings).
    g.solver = ConfigDict()
    g.solver.rtol = 1e-6
    g.solver.atol = 1e-20
    g.solver.max_steps = 20_000
    g.solver.solver = "kvaerno5"
    g.solver.batch_size = 16  # tracers per vmapped solve
    g.solver.pcoeff = 0.0  # PID step-size controller gains
    g.solver.icoeff = 1.0
    g.solver.temperature_policy = "cutoff"  # rate laws outside [T_min, T_max] (see rates.py)
    g.solver.node_stops = "step_ts"  # "step_ts" (steps end at track nodes) | "jump_ts"
    # Shielding of H2, C and CO photoreactions (see rates.py): columns x_X N_H with N_H =
    # 0.5 n_H cloud_size ("cloud", UCLCHEM's one-point cloud; UCLCHEM's default rout = 0.05 pc,
    # also track_ranges.cloud_radius_pc) or 1.6e21 Av ("av"). CO self-shielding table "vdb88"
    # (van Dishoeck & Black 1988, as published) or "uclchem_v3" (as UCLCHEM v3 reads it).
    g.solver.shielding_column = "cloud"
    g.solver.cloud_size_pc = 0.05
    g.solver.co_self_shielding = "vdb88"
    # Solver processes (chemistry/parallel.py): None = one per usable core, 1 = in this process.
    # The written file is identical whatever the count (same batches, same compiled function).
    g.solver_workers = config_dict.placeholder(int)
    # A tracer whose element totals or charge drift by more than this (relative) is a failure.
    g.conservation_rtol = 1e-6

    # --- preprocessing (owned by astrochem_jax.preprocess) -------------------------------------
    # AstroChemNet used [Density, Radfield, Av, gasTemp] and dropped zeta. Here zeta varies per
    # tracer (0.5-3.2 x 1.3e-17 s^-1, as in the real UCLCHEM collapse runs) and sets the ionisation
    # fraction, so an emulator blind to it cannot tell tracers apart: it is an input.
    # Column lists are tuples so they can be overridden from the command line, e.g.
    # --dataset.columns_to_drop="('dustTemp', 'dstep', 'point')" or
    # --dataset.columns_to_drop=dustTemp,dstep,point (ml_collections refuses lists).
    c.physical_parameters = ("Density", "Radfield", "Av", "gasTemp", "zeta")
    c.physical_ranges = config_dict.placeholder(dict)  # {name: [min, max]}; None = from train split
    c.metadata_columns = ("Index", "Model", "Time")
    c.columns_to_drop = ("dustTemp", "dstep", "SURFACE", "BULK")
    c.abundance_clip = (1e-20, 1.0)
    # Abundances are fractions of H nuclei: values in (1, 1 + above_one_tolerance] are clipped to
    # 1 (rounding), larger ones are an error naming the tracer, species and value.
    c.above_one_tolerance = 1e-6
    c.n_species = config_dict.placeholder(int)  # checked against the file when set
    # Tracer-level split, a seeded permutation of every tracer of the file (dataset.seed):
    # int(n x train_split) train, round(n x test_split) test (read only by the benchmark), the
    # rest validation (early stopping, checkpoint choice, any tuning).
    c.train_split = 0.7
    c.test_split = 0.15
    c.prepend_initial_abundances = False  # our files start at t = 0 (row 0 = initial state)
    c.shift_physical = True  # row t carries the conditions driving t -> t+1 (AstroChemNet)
    c.negative_tolerance = 1e-14  # abundances in [-tol, 0) become 0; more negative is an error
    c.physical_floor = {"Radfield": 1e-4}  # values below are raised (log10 scaling; AstroChemNet)
    c.sort_species = False  # True: species columns in alphabetical order instead of file order
    c.check_conservation = True  # record the worst element-total drift in the manifest
    # ... and refuse a file whose element totals drift by more than this (relative, worst element
    # and tracer; None = record only). Solver outputs conserve to ~1e-6 (UCLCHEM's printed
    # examples to ~4e-6); a corrupted abundance shows up as orders of magnitude more.
    c.max_element_drift = 1e-4
    return c
