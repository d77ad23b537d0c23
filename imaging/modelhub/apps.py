from django.apps import AppConfig


class ModelhubConfig(AppConfig):
    name = "imaging.modelhub"
    label = "modelhub"
    verbose_name = "Segmentation models"
