"""``python -m fedcls.report STUDY_DIR [--target 0.9]``: tables and plots of a study, from its

See fedcls.studies.report.
"""

from fedcls.studies.report import main

if __name__ == "__main__":
    raise SystemExit(main())
