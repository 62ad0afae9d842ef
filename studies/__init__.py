"""The study scripts: each reproduces one result and runs with --quick.

In a checkout they are the top-level ``studies/`` folder; an installed
package carries them as ``recurse.studies`` (see pyproject.toml), which is
where ``python -m recurse run STUDY`` finds them.
"""
