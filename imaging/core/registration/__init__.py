"""Registration of serial CTs: coarse anatomy, orientation checks against the anatomy,
rigid/affine/B-spline registration (SimpleITK or torch), transforms and their quality."""
