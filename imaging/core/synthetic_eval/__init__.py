"""An evaluation-only CT generator, written apart from the training generator.

Its own anatomy model (a superelliptic trunk, lungs bounded by a domed diaphragm and a
mediastinum, a wedge-shaped liver under the right dome, heart, spine, ribs, gut, table),
its own lesion shapes (metaball clusters, spiculated cores, part-solid, ground-glass,
cavitating, calcified nodules; rim-enhancing, cystic and hypodense liver lesions; simple
cysts as negatives), its own scanner model (box slice profile, Fourier-domain kernels
and noise power spectra, streaks, beam hardening, a table) and breathing between
studies. Nothing here imports `imaging.core.synthetic` (import-linter checks it), so a
detector trained on that generator is judged on shapes it was never shown.
"""
