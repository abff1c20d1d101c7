"""Images from every rank: conversion to uint8 HWC (``convert``) and the gather to the primary (``transport``)."""
