"The test environment: no model downloads (lessons never force the hub offline; a student in Colab gets the pretrained weights)."
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
