"""The dimse-bridge benchmark (`python bench/run.py`), split by concept.

- `common`: repository root, loopback host, AE titles, `BenchError`, `log`
- `data`: the generated test studies, loaded into Orthanc or written as C-STORE files
- `clients`: the SCU runs (pynetdicom C-GET/C-FIND, dcmtk getscu/storescu, httpx WADO-RS)
- `processes`: Orthanc, the bridges and the delaying proxy (`Lab`); CPU time and peak RSS
- `options`: the command line and its --quick defaults
- `scenarios`: the measurements (`Bench`), phase by phase, and the targets they are held to
- `report`: the results (rows, checks, ratios) as the printed table and the JSON file
- `run`: the entry point, `main()`
"""
