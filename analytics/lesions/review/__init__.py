"""A radiologist's review of the tracked lesions: measurement decisions (accept, reject,
override), identity decisions (relink, merge, split) and the choice of targets."""
